// The page's client of the server's OpenAI-style API (index.html). One function per task
// sends one request and draws what comes back into a result card: streamed tokens, partial
// images, a WAV, a clip, each with a link to the file and its provenance (the settings the API
// returns). Streams are read with fetch, not EventSource, which can neither POST nor send the
// API key.
"use strict";

const $ = (id) => document.getElementById(id);
const LABELS = { text: "Text", image: "Image", speech: "Speech", video: "Video",
                 caption: "Caption" };
const PIPELINES = { text: "text-generation", image: "text-to-image", speech: "text-to-audio",
                    video: "text-to-video", caption: "image-to-text" };
const POLL_MS = 250; // how often a video job's progress is read
let controller = null; // the AbortController of the request in flight

// -- talking to the server ------------------------------------------------------------------
function headers(json) {
  const result = {};
  const key = $("api-key").value.trim();
  if (key) result.Authorization = `Bearer ${key}`;
  if (json) result["Content-Type"] = "application/json";
  return result;
}

// fetch that throws the server's error message (OpenAI's {"error": {"message", ...}}).
async function request(method, path, body, signal) {
  const response = await fetch(path, {
    method, signal, headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const error = (await response.json()).error;
      if (error) message = `${response.status}: ${error.message}`;
    } catch (_) { /* not JSON: keep the status line */ }
    throw new Error(message);
  }
  return response;
}

// The server-sent events of a response, parsed; ends at "data: [DONE]" or the stream's end,
// and throws an "error" event's message.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length === 0) continue;
      if (data.join("\n") === "[DONE]") return;
      const parsed = JSON.parse(data.join("\n"));
      if (name === "error" || parsed.error) {
        throw new Error(parsed.error ? parsed.error.message : "the stream failed");
      }
      yield parsed;
    }
  }
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); reject(signal.reason); },
                            { once: true });
  });
}

// -- the form ---------------------------------------------------------------------------------
function currentTask() {
  return document.querySelector('input[name="task"]:checked').value;
}

function number(id) {
  const value = $(id).value.trim();
  return value === "" ? undefined : Number(value);
}

function showFieldsOf(task) {
  for (const field of document.querySelectorAll("[data-tasks]")) {
    field.hidden = !field.dataset.tasks.split(" ").includes(task);
  }
  $("prompt").required = task !== "caption";
}

function setStatus(message) {
  $("status").textContent = message;
}

function busy(running) {
  $("generate").disabled = running;
  $("stop").disabled = !running;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

// -- result cards -----------------------------------------------------------------------------
function card(task, prompt) {
  const article = el("article", { className: "result" },
                     el("h3", {}, `${LABELS[task]}: ${prompt || "(no prompt)"}`));
  article.dataset.task = task;
  article.dataset.state = "running";
  $("results").prepend(article);
  return article;
}

// The file's link and its provenance; marks the card done.
function finish(article, blob, filename, metadata) {
  const link = el("a", { href: URL.createObjectURL(blob), download: filename,
                         className: "file" }, `Download ${filename}`);
  const details = el("details", { className: "provenance" }, el("summary", {}, "Provenance"),
                     el("pre", {}, JSON.stringify(metadata || {}, null, 2)));
  article.append(el("p", {}, link), details);
  article.dataset.state = "done";
}

function pngBlob(b64) {
  return new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], { type: "image/png" });
}

// -- the tasks --------------------------------------------------------------------------------
async function streamText(article, path, body, signal, piece) {
  const text = el("p", { className: "text" });
  article.append(text);
  let chunks = 0;
  let metadata = null;
  const response = await request("POST", path, { ...body, stream: true }, signal);
  for await (const chunk of events(response)) {
    for (const choice of chunk.choices) {
      text.textContent += piece(choice) || "";
      if (choice.metadata) metadata = choice.metadata;
    }
    article.dataset.chunks = String(++chunks);
  }
  finish(article, new Blob([text.textContent], { type: "text/plain" }), "000.txt", metadata);
}

function runText(article, prompt, signal) {
  return streamText(article, "/v1/completions",
                    { prompt, max_tokens: number("max-tokens"), temperature: number("temperature"),
                      seed: number("seed") },
                    signal, (choice) => choice.text);
}

async function runCaption(article, prompt, signal) {
  const file = $("image-file").files[0];
  if (!file) throw new Error("choose an image to caption");
  const url = await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
  article.append(el("img", { className: "upload", src: url,
                             alt: `The image to caption: ${file.name}` }));
  const content = [{ type: "image_url", image_url: { url } }];
  if (prompt) content.unshift({ type: "text", text: prompt });
  return streamText(article, "/v1/chat/completions",
                    { messages: [{ role: "user", content }], max_tokens: number("max-tokens"),
                      temperature: number("temperature"), seed: number("seed") },
                    signal, (choice) => choice.delta.content);
}

async function runImage(article, prompt, signal) {
  const image = el("img", { className: "final", alt: `Image for: ${prompt}` });
  const previews = el("ol", { className: "previews" });
  previews.setAttribute("aria-label", "Partial images, as denoising went");
  article.append(image, previews);
  const body = { prompt, stream: true, partial_images: number("partials"), seed: number("seed"),
                 num_inference_steps: number("steps"), guidance_scale: number("guidance") };
  const response = await request("POST", "/v1/images/generations", body, signal);
  let final = null;
  for await (const event of events(response)) {
    const src = `data:image/png;base64,${event.b64_json}`;
    if (event.type === "image_generation.partial_image") {
      image.src = src; // the preview sharpens in place
      previews.append(el("li", {}, el("img", {
        src, alt: `Partial image ${event.partial_image_index + 1}` })));
      article.dataset.partials = String(previews.children.length);
    } else if (event.type === "image_generation.completed") {
      image.src = src;
      final = event;
    }
  }
  if (!final) throw new Error("the stream ended without the image");
  await image.decode();
  finish(article, pngBlob(final.b64_json), "000.png", final.metadata);
}

async function runSpeech(article, prompt, signal) {
  const body = { input: prompt, voice: $("voice").value, response_format: "wav",
                 seed: number("seed") };
  const response = await request("POST", "/v1/audio/speech", body, signal);
  const blob = await response.blob();
  const metadata = JSON.parse(response.headers.get("X-Multimodal-Metadata") || "{}");
  const audio = el("audio", { controls: true, src: URL.createObjectURL(blob) });
  audio.setAttribute("aria-label", `Speech: ${prompt}`);
  article.append(audio);
  finish(article, blob, "000.wav", metadata);
}

async function runVideo(article, prompt, signal) {
  const body = { prompt, seconds: String(number("seconds")), seed: number("seed"),
                 num_inference_steps: number("steps"), guidance_scale: number("guidance") };
  let job = await (await request("POST", "/v1/videos", body, signal)).json();
  // Stop deletes the job on the server, which stops it at its next denoising step.
  signal.addEventListener("abort", () => {
    fetch(`/v1/videos/${job.id}`, { method: "DELETE", headers: headers(false) });
  }, { once: true });
  const label = el("label", {}, "Progress ");
  const progress = el("progress", { max: 100, value: 0 }, "0%");
  label.append(progress);
  article.append(el("p", {}, label));
  while (job.status === "queued" || job.status === "in_progress") {
    progress.value = job.progress;
    progress.textContent = `${job.progress}%`;
    await sleep(POLL_MS, signal);
    job = await (await request("GET", `/v1/videos/${job.id}`, undefined, signal)).json();
  }
  if (job.status !== "completed") {
    throw new Error(job.error ? job.error.message : `the video job ${job.status}`);
  }
  progress.value = 100;
  progress.textContent = "100%";
  const content = await request("GET", `/v1/videos/${job.id}/content`, undefined, signal);
  const blob = await content.blob();
  const video = el("video", { controls: true, loop: true, muted: true, playsInline: true,
                              src: URL.createObjectURL(blob) });
  video.setAttribute("aria-label", `Video: ${prompt}`);
  article.append(video);
  finish(article, blob, "000.mp4", job.metadata);
}

const TASKS = { text: runText, image: runImage, speech: runSpeech, video: runVideo,
                caption: runCaption };

// -- the model: its tasks and voices ----------------------------------------------------------
async function loadModel() {
  try {
    const model = (await (await request("GET", "/v1/models")).json()).data[0];
    $("model").textContent = `Model ${model.id} (checkpoint ${model.checkpoint_id}), `
      + `${model.image_width}x${model.image_height} images.`;
    for (const radio of document.querySelectorAll('input[name="task"]')) {
      radio.disabled = !model.tasks.includes(PIPELINES[radio.value]);
    }
    const voice = $("voice");
    const chosen = voice.value; // kept when the list is read again (a new key)
    voice.replaceChildren(...model.voices.map((name) => el("option", { value: name }, name)));
    if (model.voices.includes(chosen)) voice.value = chosen;
  } catch (error) {
    $("model").textContent = error.message.startsWith("401")
      ? "This server needs an API key: type it above." : `No model: ${error.message}`;
  }
}

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const task = currentTask();
  const prompt = $("prompt").value.trim();
  if (!prompt && task !== "caption") {
    setStatus("Type a prompt first.");
    $("prompt").focus();
    return;
  }
  controller = new AbortController();
  busy(true);
  const article = card(task, prompt);
  setStatus(`${LABELS[task]}: generating...`);
  try {
    await TASKS[task](article, prompt, controller.signal);
    setStatus(`${LABELS[task]}: done.`);
  } catch (error) {
    const stopped = controller.signal.aborted;
    const message = stopped ? "Stopped." : `Error: ${error.message}`;
    article.dataset.state = stopped ? "stopped" : "error";
    article.append(el("p", { className: "error" }, message));
    setStatus(`${LABELS[task]}: ${message}`);
  } finally {
    busy(false);
    controller = null;
  }
});

$("stop").addEventListener("click", () => controller && controller.abort());
$("api-key").addEventListener("change", loadModel);
for (const radio of document.querySelectorAll('input[name="task"]')) {
  radio.addEventListener("change", () => showFieldsOf(currentTask()));
}
showFieldsOf(currentTask());
loadModel();
