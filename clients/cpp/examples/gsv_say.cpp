// gsv_say_cpp: stream one sentence from a gsv server, writing a WAV as the chunks arrive and/or
// playing them through `aplay` (ALSA) or `paplay` (PulseAudio/PipeWire).
//
//   gsv_say_cpp --server HOST:PORT --voice V --text T [-o out.wav] [--play] [options]
//
// Prints one JSON line {"ttfa_ms", "total_ms", "audio_seconds", ...} on success.  Any error: one
// line "gsv_say_cpp: error: <CODE>: <message>" on stderr and exit code 1 (2 for usage errors).
//
// It is also a template for a game: the gRPC callback never blocks on audio; it pushes PCM into a
// queue that a separate "audio thread" (here: the thread feeding the player pipe) drains.
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <iostream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "gsv_tts_client.h"

namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kProg = "gsv_say_cpp";

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// ------------------------------------------------------------------------------ WAV writer
// Writes the header up front with placeholder sizes and patches them at the end, so the file grows
// while audio streams in and is valid (if truncated) even when the stream fails half-way.
class WavWriter {
 public:
  ~WavWriter() { Close(); }

  bool Open(const std::string& path, int sample_rate, gsv::SampleFormat format) {
    f_ = std::fopen(path.c_str(), "wb");
    if (f_ == nullptr) return false;
    float_ = format == gsv::SampleFormat::kFloat32;
    const uint16_t bits = float_ ? 32 : 16;
    const uint16_t block = bits / 8;
    // Format tag 3 (IEEE float) for float PCM; tag 1 (integer PCM) otherwise.
    const uint16_t tag = float_ ? 3 : 1;
    std::string h;
    h += "RIFF";
    Put32(&h, 0);  // patched in Close()
    h += "WAVEfmt ";
    Put32(&h, 16);
    Put16(&h, tag);
    Put16(&h, 1);  // mono
    Put32(&h, static_cast<uint32_t>(sample_rate));
    Put32(&h, static_cast<uint32_t>(sample_rate) * block);
    Put16(&h, block);
    Put16(&h, bits);
    h += "data";
    Put32(&h, 0);  // patched in Close()
    return std::fwrite(h.data(), 1, h.size(), f_) == h.size();
  }

  bool Write(const gsv::AudioChunk& c) {
    // WAV is little-endian, like the wire format; re-encode explicitly instead of dumping host memory.
    std::string buf;
    if (c.f32 != nullptr) {
      for (size_t i = 0; i < c.num_samples; ++i) {
        uint32_t u;
        std::memcpy(&u, &c.f32[i], 4);
        Put32(&buf, u);
      }
    } else {
      for (size_t i = 0; i < c.num_samples; ++i) Put16(&buf, static_cast<uint16_t>(c.s16[i]));
    }
    data_bytes_ += buf.size();
    return std::fwrite(buf.data(), 1, buf.size(), f_) == buf.size();
  }

  bool Close() {
    if (f_ == nullptr) return true;
    std::string riff, data;
    Put32(&riff, static_cast<uint32_t>(36 + data_bytes_));
    Put32(&data, static_cast<uint32_t>(data_bytes_));
    bool ok = std::fseek(f_, 4, SEEK_SET) == 0 && std::fwrite(riff.data(), 1, 4, f_) == 4 &&
              std::fseek(f_, 40, SEEK_SET) == 0 && std::fwrite(data.data(), 1, 4, f_) == 4;
    ok = std::fclose(f_) == 0 && ok;
    f_ = nullptr;
    return ok;
  }

  bool is_open() const { return f_ != nullptr; }

 private:
  static void Put16(std::string* s, uint16_t v) {
    s->push_back(static_cast<char>(v & 0xff));
    s->push_back(static_cast<char>(v >> 8));
  }
  static void Put32(std::string* s, uint32_t v) {
    for (int i = 0; i < 4; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }

  std::FILE* f_ = nullptr;
  bool float_ = false;
  uint64_t data_bytes_ = 0;
};

// ------------------------------------------------------------------------------ audio queue
// The hand-off between the gRPC thread (producer) and the audio thread (consumer).  A mutex +
// condition variable is plenty for ~10 chunks a second; a real-time audio callback that must never
// block would use a single-producer/single-consumer ring buffer instead (see README.md).
class PcmQueue {
 public:
  void Push(std::string bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      q_.push_back(std::move(bytes));
    }
    cv_.notify_one();
  }
  void Close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
    }
    cv_.notify_one();
  }
  // Blocks until there is data or the queue is closed and empty (then returns nullopt).
  std::optional<std::string> Pop() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return closed_ || !q_.empty(); });
    if (q_.empty()) return std::nullopt;
    std::string s = std::move(q_.front());
    q_.pop_front();
    return s;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> q_;
  bool closed_ = false;
};

// ------------------------------------------------------------------------------ player
// Playback by piping raw PCM into a command-line player keeps the example free of audio libraries.
std::optional<std::string> FindInPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return std::nullopt;
  std::stringstream ss(path);
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    const std::string full = (dir.empty() ? "." : dir) + "/" + name;
    if (::access(full.c_str(), X_OK) == 0) return full;
  }
  return std::nullopt;
}

std::optional<std::string> PlayerCommand(int rate, gsv::SampleFormat format) {
  const bool f32 = format == gsv::SampleFormat::kFloat32;
  const std::string r = std::to_string(rate);
  if (auto aplay = FindInPath("aplay")) {
    return *aplay + " -q -t raw -c 1 -r " + r + (f32 ? " -f FLOAT_LE" : " -f S16_LE");
  }
  if (auto paplay = FindInPath("paplay")) {
    return *paplay + " --raw --channels=1 --rate=" + r + (f32 ? " --format=float32le" : " --format=s16le");
  }
  return std::nullopt;
}

class Player {
 public:
  ~Player() { Finish(); }

  // Starts the player process and the thread that feeds it.
  bool Start(const std::string& command) {
    pipe_ = ::popen(command.c_str(), "w");
    if (pipe_ == nullptr) return false;
    thread_ = std::thread([this] {
      while (auto bytes = queue_.Pop()) {
        // A full pipe blocks here (the player consumes in real time) — on this thread, never on
        // the gRPC thread, so receiving keeps running ahead of playback.
        if (std::fwrite(bytes->data(), 1, bytes->size(), pipe_) != bytes->size()) {
          failed_ = true;
          break;
        }
      }
    });
    return true;
  }

  void Push(const gsv::AudioChunk& c) {
    if (pipe_ == nullptr || failed_) return;
    // The players read little-endian; x86/ARM hosts are, so the samples go out as they are.
    const char* p = c.f32 != nullptr ? reinterpret_cast<const char*>(c.f32) : reinterpret_cast<const char*>(c.s16);
    const size_t n = c.num_samples * (c.f32 != nullptr ? 4 : 2);
    queue_.Push(std::string(p, n));
  }

  // Waits until everything queued has been handed to the player and it has exited (played it).
  bool Finish() {
    if (pipe_ == nullptr) return true;
    queue_.Close();
    if (thread_.joinable()) thread_.join();
    const int rc = ::pclose(pipe_);
    pipe_ = nullptr;
    return !failed_ && rc == 0;
  }

 private:
  std::FILE* pipe_ = nullptr;
  std::thread thread_;
  PcmQueue queue_;
  std::atomic<bool> failed_{false};
};

// ------------------------------------------------------------------------------ args
struct Args {
  std::string server, voice, text, output, lang, model, token, tls_root;
  bool play = false, use_float = false;
  int sample_rate = 0;
  std::string latency = "balanced";
  std::optional<int64_t> seed;
  std::optional<float> max_audio_seconds, speed;
  double timeout_s = 300;
};

const char* kUsage =
    "usage: gsv_say_cpp --server HOST:PORT --voice V --text T [-o out.wav] [--play]\n"
    "                   [--model ID] [--lang L] [--seed N] [--max-audio-seconds S] [--speed X] [--sample-rate HZ]\n"
    "                   [--latency balanced|lowest|quality] [--float] [--token T] [--tls] [--tls-root PEM]\n"
    "                   [--timeout S]\n"
    "Streams speech; -o writes a WAV as chunks arrive, --play pipes PCM to aplay or paplay.\n";

[[noreturn]] void UsageError(const std::string& msg) {
  std::cerr << kUsage << kProg << ": error: " << msg << "\n";
  std::exit(2);
}

Args Parse(int argc, char** argv) {
  Args a;
  bool tls = false;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) UsageError("argument " + k + " expects a value");
      return argv[++i];
    };
    try {
      if (k == "-h" || k == "--help") {
        std::cout << kUsage;
        std::exit(0);
      } else if (k == "--server") a.server = value();
      else if (k == "--voice") a.voice = value();
      else if (k == "--text") a.text = value();
      else if (k == "-o" || k == "--output") a.output = value();
      else if (k == "--play") a.play = true;
      else if (k == "--lang") a.lang = value();
      else if (k == "--model") a.model = value();
      else if (k == "--seed") a.seed = std::stoll(value());
      else if (k == "--max-audio-seconds") a.max_audio_seconds = std::stof(value());
      else if (k == "--speed") a.speed = std::stof(value());
      else if (k == "--sample-rate") a.sample_rate = std::stoi(value());
      else if (k == "--latency") a.latency = value();
      else if (k == "--float") a.use_float = true;
      else if (k == "--token") a.token = value();
      else if (k == "--tls") tls = true;
      else if (k == "--tls-root") a.tls_root = value();
      else if (k == "--timeout") a.timeout_s = std::stod(value());
      else UsageError("unrecognized argument " + k);
    } catch (const std::logic_error&) {  // std::stoi & co: invalid_argument / out_of_range
      UsageError("bad value for " + k);
    }
  }
  if (a.server.empty() || a.voice.empty() || a.text.empty()) UsageError("--server, --voice and --text are required");
  if (a.output.empty() && !a.play) UsageError("give -o FILE and/or --play");
  if (a.latency != "balanced" && a.latency != "lowest" && a.latency != "quality") {
    UsageError("--latency must be balanced, lowest or quality");
  }
  if (tls && a.tls_root.empty()) a.tls_root = "-";  // marker: TLS with system roots
  return a;
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (const unsigned char ch : s) {
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (ch < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", ch);
          out += buf;
        } else {
          out += static_cast<char>(ch);
        }
    }
  }
  return out + "\"";
}

bool ReadFile(const std::string& path, std::string* out) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return false;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out->append(buf, n);
  const bool ok = std::ferror(f) == 0;
  std::fclose(f);
  return ok;
}

int Fail(const std::string& msg) {
  std::string line = msg;
  for (char& ch : line) {
    if (ch == '\n' || ch == '\r') ch = ' ';
  }
  std::cerr << kProg << ": error: " << line << "\n";
  return 1;
}

std::atomic<bool> g_interrupted{false};
extern "C" void OnSigint(int) { g_interrupted = true; }

}  // namespace

int main(int argc, char** argv) {
  const Args args = Parse(argc, argv);
  // A player that exits early must surface as a write error, not kill us with SIGPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  std::signal(SIGINT, OnSigint);

  gsv::ClientOptions copts;
  copts.target = args.server;
  copts.bearer_token = args.token;
  copts.timeout = std::chrono::milliseconds(static_cast<int64_t>(args.timeout_s * 1000));
  if (!args.tls_root.empty()) {
    copts.use_tls = true;
    if (args.tls_root != "-" && !ReadFile(args.tls_root, &copts.tls_root_pem)) {
      return Fail("cannot read " + args.tls_root + ": " + std::strerror(errno));
    }
  }
  gsv::TtsClient client(copts);

  gsv::SynthesisOptions opts;
  opts.voice_id = args.voice;
  opts.model_id = args.model;
  opts.language = args.lang;
  opts.format = args.use_float ? gsv::SampleFormat::kFloat32 : gsv::SampleFormat::kInt16;
  opts.sample_rate_hz = args.sample_rate;
  opts.latency = args.latency == "lowest"    ? gsv::LatencyMode::kLowestLatency
                 : args.latency == "quality" ? gsv::LatencyMode::kHighestQuality
                                             : gsv::LatencyMode::kBalanced;
  opts.seed = args.seed;
  opts.max_audio_seconds = args.max_audio_seconds;
  opts.speed = args.speed;

  WavWriter wav;
  Player player;
  std::string io_error;  // first local failure (file or player); set on the gRPC thread
  gsv::StreamInfo info;
  std::optional<gsv::Summary> summary;
  std::optional<double> ttfa_ms;
  uint64_t samples = 0;
  uint32_t chunks = 0;

  gsv::StreamCallbacks cb;
  cb.on_start = [&](const gsv::StreamInfo& i) {
    info = i;
    // The output is opened only once the server has accepted the request, so a bad voice or
    // text leaves no empty file behind.
    if (!args.output.empty() && !wav.Open(args.output, i.sample_rate_hz, i.format)) {
      io_error = "cannot write " + args.output + ": " + std::strerror(errno);
    }
    if (args.play && io_error.empty()) {
      if (auto cmd = PlayerCommand(i.sample_rate_hz, i.format)) {
        if (!player.Start(*cmd)) io_error = "cannot start the player: " + *cmd;
      } else {
        // Playing was asked for explicitly; a silent run would be confusing.
        io_error = "--play needs aplay (alsa-utils) or paplay (pulseaudio-utils) on PATH";
      }
    }
  };
  const auto t0 = Clock::now();
  cb.on_audio = [&](const gsv::AudioChunk& c) {
    if (!ttfa_ms) ttfa_ms = MsSince(t0);
    if (!io_error.empty()) return false;  // stop the stream: we cannot use the audio
    if (wav.is_open() && !wav.Write(c)) {
      io_error = "cannot write " + args.output + ": " + std::strerror(errno);
      return false;
    }
    player.Push(c);
    samples += c.num_samples;
    ++chunks;
    return true;
  };
  cb.on_summary = [&](const gsv::Summary& s) { summary = s; };

  // Run the stream on a worker thread and keep this thread free to react to Ctrl-C, exactly as a
  // game thread would cancel an NPC line when the player interrupts it.
  gsv::Cancellation cancel;
  std::future<gsv::Status> done = client.StreamingSynthesizeAsync(args.text, opts, cb, &cancel);
  while (done.wait_for(std::chrono::milliseconds(20)) != std::future_status::ready) {
    if (g_interrupted && !cancel.cancelled()) cancel.Cancel();
  }
  const gsv::Status status = done.get();
  const double total_ms = MsSince(t0);

  const bool wav_ok = wav.Close();
  // Let the player play out what is queued.  After Ctrl-C the terminal has interrupted the player
  // too (same process group), so this returns promptly instead of playing the rest.
  const bool play_ok = player.Finish();

  if (!io_error.empty()) return Fail(io_error);
  if (!status.ok()) return Fail(status.ToString());
  if (!wav_ok) return Fail("cannot write " + args.output);
  if (!play_ok) return Fail("the audio player failed");

  const int rate = info.sample_rate_hz > 0 ? info.sample_rate_hz : 32000;
  std::ostringstream out;
  out.setf(std::ios::fixed);
  out.precision(1);
  out << "{\"ttfa_ms\": ";
  if (ttfa_ms) out << *ttfa_ms; else out << "null";
  out << ", \"total_ms\": " << total_ms;
  out.precision(3);
  out << ", \"audio_seconds\": " << static_cast<double>(samples) / rate << ", \"chunks\": " << chunks
      << ", \"sample_rate\": " << rate << ", \"seed\": " << info.seed
      << ", \"request_id\": " << JsonString(info.request_id);
  if (summary) {
    out.precision(1);
    out << ", \"server_first_audio_ms\": " << summary->first_audio_ms
        << ", \"truncated\": " << (summary->hit_max_audio_length ? "true" : "false");
  }
  if (!args.output.empty()) out << ", \"output\": " << JsonString(args.output);
  out << "}";
  std::cout << out.str() << std::endl;
  return 0;
}
