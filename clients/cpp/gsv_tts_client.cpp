// Implementation of gsv::TtsClient on the synchronous gRPC C++ API.
//
// The synchronous API is used on purpose: a TTS stream is a single reader loop, and a blocking call
// on a worker thread is far easier to embed in a game than a completion-queue state machine.
#include "gsv_tts_client.h"

#include <grpcpp/grpcpp.h>

#include <cstring>
#include <exception>
#include <utility>

#include "protos/tts/v1/tts.grpc.pb.h"

namespace gsv {
namespace pb = ::gsv::tts::v1;

namespace {

// Large enough for a whole unary clip (64 MiB is ~17 min of 16-bit audio at 32 kHz); the gRPC
// default of 4 MiB would reject a minute of float audio.  Matches the server's send limit.
constexpr int kMaxMessageBytes = 64 * 1024 * 1024;

Status FromGrpc(const grpc::Status& s, const grpc::ClientContext& ctx) {
  Status out;
  out.code = static_cast<StatusCode>(s.error_code());
  out.message = s.error_message();
  // The server attaches a back-off hint to RESOURCE_EXHAUSTED; a game can reschedule the line.
  const auto& trailers = ctx.GetServerTrailingMetadata();
  auto it = trailers.find("grpc-retry-pushback-ms");
  if (it != trailers.end()) {
    try {
      out.retry_after_ms = std::stoi(std::string(it->second.data(), it->second.size()));
    } catch (const std::exception&) {
      // A malformed hint is not worth failing over; keep -1 (= no hint).
    }
  }
  return out;
}

Status MakeStatus(StatusCode code, std::string message) {
  Status s;
  s.code = code;
  s.message = std::move(message);
  return s;
}

// The wire format is little-endian whatever the host is; assembling bytes explicitly keeps this
// portable (consoles, big-endian targets) and avoids type-punning the protobuf string buffer.
// Compilers turn these loops into plain loads on little-endian machines.
void DecodeS16(const std::string& bytes, std::vector<int16_t>* out) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size() / 2;
  out->resize(n);
  for (size_t i = 0; i < n; ++i) {
    const auto u = static_cast<uint16_t>(p[2 * i] | (p[2 * i + 1] << 8));
    (*out)[i] = static_cast<int16_t>(u);
  }
}

void DecodeF32(const std::string& bytes, std::vector<float>* out) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size() / 4;
  out->resize(n);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(p[4 * i]) | (static_cast<uint32_t>(p[4 * i + 1]) << 8) |
                       (static_cast<uint32_t>(p[4 * i + 2]) << 16) |
                       (static_cast<uint32_t>(p[4 * i + 3]) << 24);
    float f;
    std::memcpy(&f, &u, sizeof f);
    (*out)[i] = f;
  }
}

size_t BytesPerSample(SampleFormat f) { return f == SampleFormat::kFloat32 ? 4 : 2; }

void FillConfig(const SynthesisOptions& o, pb::SynthesisConfig* c) {
  c->set_voice_id(o.voice_id);
  c->set_language(o.language);
  c->set_model_id(o.model_id);
  c->mutable_output()->set_encoding(o.format == SampleFormat::kFloat32 ? pb::PCM_F32LE : pb::PCM_S16LE);
  c->mutable_output()->set_sample_rate_hz(o.sample_rate_hz);
  switch (o.latency) {
    case LatencyMode::kBalanced: c->set_latency_mode(pb::BALANCED); break;
    case LatencyMode::kLowestLatency: c->set_latency_mode(pb::LOWEST_LATENCY); break;
    case LatencyMode::kHighestQuality: c->set_latency_mode(pb::HIGHEST_QUALITY); break;
  }
  if (o.speed) c->set_speed(*o.speed);
  if (o.max_audio_seconds) c->set_max_audio_seconds(*o.max_audio_seconds);
  auto* s = c->mutable_sampling();
  if (o.seed) s->set_seed(*o.seed);
  if (o.temperature) s->set_temperature(*o.temperature);
  if (o.top_k) s->set_top_k(*o.top_k);
  if (o.top_p) s->set_top_p(*o.top_p);
  c->set_request_id(o.request_id);
}

SampleFormat FromEncoding(pb::AudioEncoding e) {
  return e == pb::PCM_F32LE ? SampleFormat::kFloat32 : SampleFormat::kInt16;
}

Summary FromSummary(const pb::SynthesisSummary& s) {
  Summary out;
  out.hit_max_audio_length = s.finish_reason() == pb::MAX_AUDIO_LENGTH;
  out.audio_seconds = s.audio_seconds();
  out.semantic_tokens = s.semantic_tokens();
  out.chunks = s.chunks();
  out.real_time_factor = s.real_time_factor();
  out.queue_ms = s.timings().queue_ms();
  out.frontend_ms = s.timings().frontend_ms();
  out.first_audio_ms = s.timings().first_audio_ms();
  out.total_ms = s.timings().total_ms();
  return out;
}

// Ties a Cancellation to one ClientContext for the lifetime of a call.  Detaching before the
// context is destroyed is what makes a late Cancel() from another thread safe.
class CancelScope {
 public:
  CancelScope(Cancellation* c, grpc::ClientContext* ctx, std::function<void(std::function<void()>)> attach,
              std::function<void()> detach)
      : active_(c != nullptr), detach_(std::move(detach)) {
    if (active_) attach([ctx] { ctx->TryCancel(); });
  }
  ~CancelScope() {
    if (active_) detach_();
  }
  CancelScope(const CancelScope&) = delete;
  CancelScope& operator=(const CancelScope&) = delete;

 private:
  bool active_;
  std::function<void()> detach_;
};

}  // namespace

// ------------------------------------------------------------------------------------------ Status
const char* StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kCancelled: return "CANCELLED";
    case StatusCode::kUnknown: return "UNKNOWN";
    case StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case StatusCode::kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case StatusCode::kNotFound: return "NOT_FOUND";
    case StatusCode::kAlreadyExists: return "ALREADY_EXISTS";
    case StatusCode::kPermissionDenied: return "PERMISSION_DENIED";
    case StatusCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case StatusCode::kFailedPrecondition: return "FAILED_PRECONDITION";
    case StatusCode::kAborted: return "ABORTED";
    case StatusCode::kOutOfRange: return "OUT_OF_RANGE";
    case StatusCode::kUnimplemented: return "UNIMPLEMENTED";
    case StatusCode::kInternal: return "INTERNAL";
    case StatusCode::kUnavailable: return "UNAVAILABLE";
    case StatusCode::kDataLoss: return "DATA_LOSS";
    case StatusCode::kUnauthenticated: return "UNAUTHENTICATED";
  }
  return "UNKNOWN";
}

std::string Status::ToString() const {
  std::string s = StatusCodeName(code);
  if (!message.empty()) s += ": " + message;
  if (retry_after_ms >= 0) s += " (retry after " + std::to_string(retry_after_ms) + " ms)";
  // Callers log this as one line; gRPC transport errors sometimes contain newlines.
  for (char& ch : s) {
    if (ch == '\n' || ch == '\r') ch = ' ';
  }
  return s;
}

// ------------------------------------------------------------------------------------ Cancellation
void Cancellation::Cancel() {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_ = true;
  if (cancel_call_) cancel_call_();  // grpc::ClientContext::TryCancel is thread-safe
}

bool Cancellation::cancelled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
}

void Cancellation::Attach(std::function<void()> cancel_call) {
  std::lock_guard<std::mutex> lock(mu_);
  cancel_call_ = std::move(cancel_call);
  if (cancelled_) cancel_call_();  // cancelled before the call started: stop it right away
}

void Cancellation::Detach() {
  std::lock_guard<std::mutex> lock(mu_);
  cancel_call_ = nullptr;
}

// --------------------------------------------------------------------------------------- TtsClient
struct TtsClient::Impl {
  ClientOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::TextToSpeech::Stub> stub;

  void Prepare(grpc::ClientContext* ctx) const {
    ctx->set_deadline(std::chrono::system_clock::now() + options.timeout);
    if (!options.bearer_token.empty()) ctx->AddMetadata("authorization", "Bearer " + options.bearer_token);
  }

  CancelScope Scope(Cancellation* c, grpc::ClientContext* ctx) const {
    return CancelScope(
        c, ctx, [c](std::function<void()> f) { c->Attach(std::move(f)); }, [c] { c->Detach(); });
  }
};

TtsClient::TtsClient(ClientOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (impl_->options.use_tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = impl_->options.tls_root_pem;
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  impl_->channel = grpc::CreateCustomChannel(impl_->options.target, creds, args);
  impl_->stub = pb::TextToSpeech::NewStub(impl_->channel);
}

TtsClient::~TtsClient() = default;

Status TtsClient::StreamingSynthesize(const std::string& text, const SynthesisOptions& options,
                                      const StreamCallbacks& callbacks, Cancellation* cancel) {
  pb::SynthesizeRequest request;
  FillConfig(options, request.mutable_config());
  request.set_text(text);

  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  // C++17 guaranteed copy elision: the scope is built in place, never copied.
  const CancelScope scope = impl_->Scope(cancel, &ctx);
  std::unique_ptr<grpc::ClientReader<pb::SynthesizeStreamResponse>> reader =
      impl_->stub->StreamingSynthesize(&ctx, request);

  pb::SynthesizeStreamResponse msg;
  StreamInfo info;
  bool started = false;
  std::optional<Status> local_error;  // a failure we detected ourselves (takes precedence)
  uint32_t next_sequence = 0;
  uint64_t received = 0;
  // Reused across chunks so a long stream does not allocate per chunk.
  std::vector<int16_t> s16;
  std::vector<float> f32;

  while (!local_error && reader->Read(&msg)) {
    switch (msg.event_case()) {
      case pb::SynthesizeStreamResponse::kStart: {
        const auto& st = msg.start();
        info.request_id = st.request_id();
        info.format = FromEncoding(st.format().encoding());
        info.sample_rate_hz = st.format().sample_rate_hz();
        info.seed = st.seed();
        info.voice_id = st.voice_id();
        info.voice_version = st.voice_version();
        info.model_id = st.model_id();
        started = true;
        if (callbacks.on_start) callbacks.on_start(info);
        break;
      }
      case pb::SynthesizeStreamResponse::kAudio: {
        const auto& a = msg.audio();
        // The protocol promises start first and gap-free sequences; anything else would play
        // garbage, so it ends the call instead.
        if (!started) {
          local_error = MakeStatus(StatusCode::kInternal, "audio before stream start");
          break;
        }
        if (a.sequence() != next_sequence) {
          local_error = MakeStatus(StatusCode::kInternal, "audio chunk " + std::to_string(a.sequence()) +
                                                              " out of order (expected " +
                                                              std::to_string(next_sequence) + ")");
          break;
        }
        if (a.data().size() % BytesPerSample(info.format) != 0) {
          local_error = MakeStatus(StatusCode::kInternal, "audio chunk with a partial sample");
          break;
        }
        ++next_sequence;
        AudioChunk chunk;
        chunk.sequence = a.sequence();
        chunk.sample_rate_hz = info.sample_rate_hz;
        // Counted from the bytes actually received rather than taken from start_sample/num_samples,
        // so positions are in output-rate samples even when the server resamples.
        chunk.start_sample = received;
        if (info.format == SampleFormat::kFloat32) {
          DecodeF32(a.data(), &f32);
          chunk.f32 = f32.data();
          chunk.num_samples = f32.size();
        } else {
          DecodeS16(a.data(), &s16);
          chunk.s16 = s16.data();
          chunk.num_samples = s16.size();
        }
        received += chunk.num_samples;
        if (callbacks.on_audio && !callbacks.on_audio(chunk)) {
          local_error = MakeStatus(StatusCode::kCancelled, "stopped by the audio callback");
        }
        break;
      }
      case pb::SynthesizeStreamResponse::kSummary:
        if (callbacks.on_summary) callbacks.on_summary(FromSummary(msg.summary()));
        break;
      default:
        break;  // an event type added by a newer server: ignore it
    }
  }
  if (local_error) {
    // Finish() must not be called with unread messages pending; cancelling makes the remaining
    // reads fail fast, so draining costs nothing.
    ctx.TryCancel();
    while (reader->Read(&msg)) {
    }
  }
  const grpc::Status st = reader->Finish();
  if (local_error) return *local_error;
  if (st.error_code() == grpc::StatusCode::CANCELLED && cancel != nullptr && cancel->cancelled()) {
    return MakeStatus(StatusCode::kCancelled, "cancelled by the client");
  }
  return FromGrpc(st, ctx);
}

std::future<Status> TtsClient::StreamingSynthesizeAsync(std::string text, SynthesisOptions options,
                                                        StreamCallbacks callbacks, Cancellation* cancel) {
  return std::async(std::launch::async,
                    [this, text = std::move(text), options = std::move(options),
                     callbacks = std::move(callbacks), cancel] {
                      return StreamingSynthesize(text, options, callbacks, cancel);
                    });
}

Status TtsClient::Synthesize(const std::string& text, const SynthesisOptions& options, Clip* out,
                             Cancellation* cancel) {
  pb::SynthesizeRequest request;
  FillConfig(options, request.mutable_config());
  request.set_text(text);
  pb::SynthesizeResponse response;
  grpc::ClientContext ctx;
  impl_->Prepare(&ctx);
  grpc::Status st;
  {
    const CancelScope scope = impl_->Scope(cancel, &ctx);
    st = impl_->stub->Synthesize(&ctx, request, &response);
  }
  if (!st.ok()) {
    if (st.error_code() == grpc::StatusCode::CANCELLED && cancel != nullptr && cancel->cancelled()) {
      return MakeStatus(StatusCode::kCancelled, "cancelled by the client");
    }
    return FromGrpc(st, ctx);
  }
  Clip clip;
  clip.info.request_id = response.request_id();
  clip.info.format = FromEncoding(response.format().encoding());
  clip.info.sample_rate_hz = response.format().sample_rate_hz();
  clip.info.seed = response.seed();
  clip.info.voice_id = options.voice_id;
  if (response.audio().size() % BytesPerSample(clip.info.format) != 0) {
    return MakeStatus(StatusCode::kInternal, "audio with a partial sample");
  }
  if (clip.info.format == SampleFormat::kFloat32) {
    DecodeF32(response.audio(), &clip.f32);
  } else {
    DecodeS16(response.audio(), &clip.s16);
  }
  clip.summary = FromSummary(response.summary());
  *out = std::move(clip);
  return Status{};
}

Status TtsClient::ListVoices(std::vector<VoiceInfo>* out, const std::string& language) {
  std::vector<VoiceInfo> voices;
  std::string token;
  do {
    pb::ListVoicesRequest request;
    request.set_language(language);
    request.set_page_token(token);
    pb::ListVoicesResponse response;
    grpc::ClientContext ctx;  // a context serves exactly one call
    impl_->Prepare(&ctx);
    const grpc::Status st = impl_->stub->ListVoices(&ctx, request, &response);
    if (!st.ok()) return FromGrpc(st, ctx);
    for (const auto& v : response.voices()) {
      VoiceInfo info;
      info.voice_id = v.voice_id();
      info.display_name = v.display_name();
      info.language = v.language();
      info.reference_text = v.reference_text();
      info.native_sample_rate_hz = v.native_sample_rate_hz();
      info.model_id = v.model_id();
      info.version = v.version();
      info.create_time_unix = v.create_time_unix();
      info.reference_free = v.reference_free();
      voices.push_back(std::move(info));
    }
    token = response.next_page_token();
  } while (!token.empty());
  *out = std::move(voices);
  return Status{};
}

}  // namespace gsv
