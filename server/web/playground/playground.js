// gsv playground: the WebSocket protocol of protos/tts/v1/websocket.md, played with Web Audio.
// Audio is requested as 32-bit float PCM at the model's rate; each chunk becomes an AudioBuffer
// scheduled right after the previous one, so playback starts with the first chunk.
"use strict";

const $ = (id) => document.getElementById(id);
let socket = null;
let audioCtx = null;
let voiceListings = 0;  // only the latest voice listing may fill the list

function token() {
  return $("token").value.trim();
}

function authHeaders() {
  return token() ? { Authorization: "Bearer " + token() } : {};
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", !!isError);
}

async function loadVoices() {
  sessionStorage.setItem("gsv-token", token());
  const select = $("voice");
  const listing = ++voiceListings;
  try {
    const response = await fetch("/v1/audio/voices", { headers: authHeaders() });
    const body = await response.json();
    if (listing !== voiceListings) return;
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    select.innerHTML = "";
    for (const v of body.data) {
      const option = document.createElement("option");
      option.value = v.id;
      option.textContent = v.name === v.id ? `${v.id} (${v.language})` : `${v.name} — ${v.id} (${v.language})`;
      select.appendChild(option);
    }
    if (!body.data.length) {
      select.innerHTML = '<option value="">(no voices: register one with gsv-voices)</option>';
    }
    setStatus(`${body.data.length} voice(s)`);
    loadModels();
  } catch (e) {
    if (listing !== voiceListings) return;
    select.innerHTML = '<option value="">(voices unavailable)</option>';
    setStatus("could not list voices: " + e.message, true);
  }
}

async function loadModels() {
  const select = $("model");
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() });
    const body = await response.json();
    if (!response.ok) return;
    const chosen = select.value;
    select.innerHTML = "";
    for (const m of body.data) {
      const option = document.createElement("option");
      option.value = m.default ? "" : m.id;  // "" = the server's default model
      option.textContent = `${m.id} (${m.version}${m.default ? ", default" : ""})`;
      select.appendChild(option);
    }
    select.value = chosen;
    if (select.selectedIndex < 0) select.selectedIndex = 0;
  } catch (e) { /* the model list is optional: requests use the default model */ }
}

function stop() {
  if (socket) socket.close();
  socket = null;
  $("play").disabled = false;
  $("stop").disabled = true;
}

async function play() {
  const voice = $("voice").value;
  const text = $("text").value;
  if (!voice) return setStatus("choose a voice first", true);
  if (!text.trim()) return setStatus("type some text first", true);
  stop();
  if (!audioCtx) audioCtx = new AudioContext();
  await audioCtx.resume().catch(() => {});
  for (const id of ["ttfa", "rtf", "audio"]) $(id).textContent = "–";

  const t0 = performance.now();
  let rate = 32000, samples = 0, chunks = 0, tFirst = null, tLast = null, nextTime = 0;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/v1/ws/synthesize`);
  socket = ws;
  ws.binaryType = "arraybuffer";
  $("play").disabled = true;
  $("stop").disabled = false;
  setStatus("connecting…");

  ws.onopen = () => {
    const config = { voice_id: voice, latency_mode: $("latency").value, encoding: "pcm_f32le" };
    if ($("language").value.trim()) config.language = $("language").value.trim();
    if ($("model").value) config.model_id = $("model").value;
    if (token()) config.token = token();  // browsers cannot set headers on a WebSocket
    ws.send(JSON.stringify(config));
    ws.send(JSON.stringify({ text: text, close: true }));
    setStatus("synthesizing…");
  };

  ws.onmessage = (message) => {
    if (typeof message.data !== "string") {  // one chunk of float32 PCM
      const pcm = new Float32Array(message.data);
      const now = performance.now();
      if (tFirst === null) {
        tFirst = now;
        $("ttfa").textContent = `${Math.round(tFirst - t0)} ms`;
      }
      tLast = now;
      samples += pcm.length;
      chunks += 1;
      const buffer = audioCtx.createBuffer(1, pcm.length, rate);
      buffer.copyToChannel(pcm, 0);
      const source = audioCtx.createBufferSource();
      source.buffer = buffer;
      source.connect(audioCtx.destination);
      nextTime = Math.max(nextTime, audioCtx.currentTime + 0.05);
      source.start(nextTime);
      nextTime += buffer.duration;
      $("audio").textContent = `${(samples / rate).toFixed(2)} s in ${chunks} chunk(s)`;
      setStatus(`playing: ${(samples / rate).toFixed(2)} s of audio received`);
      return;
    }
    const event = JSON.parse(message.data);
    if (event.type === "start") {
      rate = event.sample_rate_hz;
    } else if (event.type === "summary") {
      const seconds = samples / rate;
      const rtf = seconds > 0 ? (tLast - t0) / 1000 / seconds : 0;
      $("rtf").textContent = `${rtf.toFixed(2)} (server ${event.real_time_factor.toFixed(2)})`;
      setStatus(`done: ${seconds.toFixed(2)} s of audio in ${chunks} chunk(s), first audio after ` +
                `${Math.round(tFirst - t0)} ms, real-time factor ${rtf.toFixed(2)}`);
    } else if (event.type === "error") {
      setStatus(`error ${event.code}: ${event.message}`, true);
    }
  };

  ws.onerror = () => setStatus("connection failed", true);
  ws.onclose = () => {
    if (socket === ws) stop();
  };
}

$("token").value = sessionStorage.getItem("gsv-token") || "";
$("reload").addEventListener("click", loadVoices);
$("play").addEventListener("click", play);
$("stop").addEventListener("click", () => {
  stop();
  setStatus("stopped");
});
loadVoices();
