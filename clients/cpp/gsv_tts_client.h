// gsv::TtsClient — a small C++17 client for the gsv GPT-SoVITS streaming TTS server (gsv.tts.v1).
//
// This header deliberately includes no gRPC or protobuf headers: game engines (Unreal in particular)
// have their own macros and allocators that clash with them, so the generated stubs stay inside
// gsv_tts_client.cpp and callers only see standard-library types.
//
// Threading: every call blocks the calling thread and runs its callbacks on that thread.  A game
// runs StreamingSynthesize on a worker thread (or via StreamingSynthesizeAsync) and hands the PCM to
// its audio thread through a queue; see README.md.  One TtsClient may be used from several threads at
// once (the underlying gRPC channel and stub are thread-safe).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace gsv {

// Mirrors grpc::StatusCode (same numeric values) so callers can branch on the server's error without
// including gRPC headers.  Client-side failures use the same codes (e.g. CANCELLED after Cancel()).
enum class StatusCode : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

// "NOT_FOUND", "UNAVAILABLE", ... (the canonical gRPC names, as grpcurl and the Python client print them).
const char* StatusCodeName(StatusCode code);

struct Status {
  StatusCode code = StatusCode::kOk;
  std::string message;
  // RESOURCE_EXHAUSTED carries the server's back-off hint (the `grpc-retry-pushback-ms` trailer);
  // -1 when the server sent none.
  int retry_after_ms = -1;

  bool ok() const { return code == StatusCode::kOk; }
  // One line, e.g. "NOT_FOUND: voice 'nobody' not found".
  std::string ToString() const;
};

enum class SampleFormat { kInt16, kFloat32 };

enum class LatencyMode { kBalanced, kLowestLatency, kHighestQuality };

struct ClientOptions {
  std::string target;  // "host:port"
  // Sent as `authorization: Bearer <token>` on every call.  Added as plain call metadata rather than
  // grpc call credentials because gRPC refuses to send call credentials over an insecure channel,
  // and a local dev server usually has no TLS.
  std::string bearer_token;
  bool use_tls = false;
  std::string tls_root_pem;  // PEM root certificates; empty = the system roots (only with use_tls)
  // Per-call deadline.  Long enough for a whole paragraph; a game that wants to give up earlier
  // cancels instead.
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
};

struct SynthesisOptions {
  std::string voice_id;  // required
  std::string language;  // empty = the voice's language
  std::string model_id;  // empty = the server's default model (ListModels lists the others)
  SampleFormat format = SampleFormat::kInt16;
  int sample_rate_hz = 0;  // 0 = native (32000); otherwise one the server lists
  LatencyMode latency = LatencyMode::kBalanced;
  std::optional<float> speed;              // [0.5, 2]
  std::optional<float> max_audio_seconds;  // cap on generated audio
  std::optional<int64_t> seed;             // unset = random; the seed used is reported back
  std::optional<float> temperature;
  std::optional<int> top_k;
  std::optional<float> top_p;
  std::string request_id;  // empty = server generates one
};

struct StreamInfo {
  std::string request_id;
  int sample_rate_hz = 0;
  SampleFormat format = SampleFormat::kInt16;
  int64_t seed = 0;
  std::string voice_id;
  int voice_version = 0;
  std::string model_id;
};

// One piece of audio as it arrives.  Exactly one of s16/f32 is set (per StreamInfo::format); the
// pointer is valid only during the callback — copy the samples out (into your audio queue).
struct AudioChunk {
  const int16_t* s16 = nullptr;
  const float* f32 = nullptr;
  size_t num_samples = 0;
  uint64_t start_sample = 0;  // position of the first sample in the whole utterance
  uint32_t sequence = 0;      // 0, 1, 2, ...
  int sample_rate_hz = 0;
};

struct Summary {
  bool hit_max_audio_length = false;  // false = the text was completed
  float audio_seconds = 0;
  uint32_t semantic_tokens = 0;
  uint32_t chunks = 0;
  float real_time_factor = 0;
  // Server-side timings (ms).
  float queue_ms = 0, frontend_ms = 0, first_audio_ms = 0, total_ms = 0;
};

struct StreamCallbacks {
  std::function<void(const StreamInfo&)> on_start;
  // Return false to stop the stream (same effect as Cancellation::Cancel()).
  std::function<bool(const AudioChunk&)> on_audio;
  std::function<void(const Summary&)> on_summary;
};

// Lets another thread (the game thread when the player interrupts an NPC) stop a call in flight.
// Cancel() is safe before, during and after the call; a cancelled call returns CANCELLED.
// One Cancellation per call: it remembers that it was cancelled.
class Cancellation {
 public:
  void Cancel();
  bool cancelled() const;

 private:
  friend class TtsClient;
  // Type-erased so this header needs no gRPC include; set while a call is running.
  void Attach(std::function<void()> cancel_call);
  void Detach();

  mutable std::mutex mu_;
  bool cancelled_ = false;
  std::function<void()> cancel_call_;
};

struct Clip {
  StreamInfo info;  // request_id, rate, format, seed (voice/model fields are not set by Synthesize)
  std::vector<int16_t> s16;  // filled when format == kInt16
  std::vector<float> f32;    // filled when format == kFloat32
  Summary summary;
};

struct VoiceInfo {
  std::string voice_id;
  std::string display_name;
  std::string language;
  std::string reference_text;
  int native_sample_rate_hz = 0;
  std::string model_id;
  int version = 0;
  int64_t create_time_unix = 0;
  bool reference_free = false;
};

class TtsClient {
 public:
  // Creating the client does not connect; the first call does (and fails with UNAVAILABLE if the
  // server is not there).
  explicit TtsClient(ClientOptions options);
  ~TtsClient();
  TtsClient(const TtsClient&) = delete;
  TtsClient& operator=(const TtsClient&) = delete;

  // Streams audio for `text`, calling `callbacks` in order: on_start once, on_audio per chunk as it
  // arrives, on_summary once.  Blocks until the stream ends.  `cancel` may be null.
  Status StreamingSynthesize(const std::string& text, const SynthesisOptions& options,
                             const StreamCallbacks& callbacks, Cancellation* cancel = nullptr);

  // The same on a new thread; callbacks run on that thread.  `cancel` (may be null) must outlive it,
  // as must this client.
  std::future<Status> StreamingSynthesizeAsync(std::string text, SynthesisOptions options,
                                               StreamCallbacks callbacks, Cancellation* cancel = nullptr);

  // Whole utterance in one response (pre-baked lines, caches).
  Status Synthesize(const std::string& text, const SynthesisOptions& options, Clip* out,
                    Cancellation* cancel = nullptr);

  // All voices visible to this token (follows the server's pagination).
  Status ListVoices(std::vector<VoiceInfo>* out, const std::string& language = "");

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace gsv
