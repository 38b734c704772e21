// Build the request of each chat endpoint, and read its SSE answer into
// {content, reasoning, usage, timings}.
// A message's content for `endpoint`: its text, plus its attached images.
function contentFor(endpoint, m) {
  const images = m.images || [];
  if (!images.length) return m.content;
  if (endpoint === "/v1/messages") {
    return [...images.map((url) => {
      const [, type, data] = /^data:([^;]+);base64,(.*)$/.exec(url) || [];
      return { type: "image", source: { type: "base64", media_type: type, data } };
    }), { type: "text", text: m.content }];
  }
  if (endpoint === "/v1/responses") {
    return [{ type: "input_text", text: m.content }, ...images.map((url) => ({ type: "input_image", image_url: url }))];
  }
  return [{ type: "text", text: m.content }, ...images.map((url) => ({ type: "image_url", image_url: { url } }))];
}

export function buildRequest(endpoint, model, messages, s) {
  const body = { model, stream: true };
  const common = {};
  if (s.temperature !== "" && s.temperature !== null) common.temperature = Number(s.temperature);
  if (s.topP !== "" && s.topP !== null) common.top_p = Number(s.topP);
  const stops = (s.stop || "").split(",").map((x) => x.trim()).filter(Boolean);
  if (endpoint === "/v1/messages") {
    if (s.system) body.system = s.system;
    body.messages = messages.map((m) => ({ role: m.role, content: contentFor(endpoint, m) }));
    body.max_tokens = Number(s.maxTokens) || 1024;
    if (stops.length) body.stop_sequences = stops;
  } else if (endpoint === "/v1/responses") {
    if (s.system) body.instructions = s.system;
    body.input = messages.map((m) => ({ role: m.role, content: contentFor(endpoint, m) }));
    if (s.maxTokens) body.max_output_tokens = Number(s.maxTokens);
  } else {
    body.messages = (s.system ? [{ role: "system", content: s.system }] : []).concat(
      messages.map((m) => ({ role: m.role, content: contentFor(endpoint, m) })));
    if (s.maxTokens) body.max_tokens = Number(s.maxTokens);
    body.stream_options = { include_usage: true };
    if (stops.length) body.stop = stops;
    if (s.seed !== "" && s.seed !== null && s.seed !== undefined) body.seed = Number(s.seed);
  }
  Object.assign(body, common);
  if (s.extra && s.extra.trim()) Object.assign(body, JSON.parse(s.extra));
  return body;
}

// Read an SSE body; call onEvent(eventName, data) for each event.
export async function readSSE(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      let name = "message";
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

// Fold one event of `endpoint` into `acc` ({content, reasoning, usage, timings}).
export function foldEvent(endpoint, acc, name, data) {
  if (data === "[DONE]") return;
  let j;
  try { j = JSON.parse(data); } catch (_) { return; }
  if (j.error) throw new Error(j.error.message || JSON.stringify(j.error));
  if (endpoint === "/v1/messages") {
    if (j.type === "content_block_delta") {
      if (j.delta.type === "thinking_delta") acc.reasoning += j.delta.thinking || "";
      else acc.content += j.delta.text || "";
    } else if (j.type === "message_start" && j.message.usage) {
      acc.usage = { ...acc.usage, input_tokens: j.message.usage.input_tokens };
    } else if (j.type === "message_delta" && j.usage) {
      acc.usage = { ...acc.usage, ...j.usage };
    }
  } else if (endpoint === "/v1/responses") {
    const t = j.type || name;
    if (t === "response.output_text.delta") acc.content += j.delta || "";
    else if (t.startsWith("response.reasoning") && t.endsWith(".delta")) acc.reasoning += j.delta || "";
    else if (t === "response.completed" && j.response) acc.usage = j.response.usage || acc.usage;
  } else {
    const choice = (j.choices || [])[0];
    if (choice && choice.delta) {
      acc.content += choice.delta.content || "";
      acc.reasoning += choice.delta.reasoning_content || choice.delta.reasoning || "";
    }
    if (j.usage) acc.usage = j.usage;
    if (j.timings) acc.timings = j.timings;
  }
}

// {input, output, speed} of an answer, from usage/timings or our clock.
export function answerStats(acc, startedMs, firstMs, endMs) {
  const u = acc.usage || {};
  const t = acc.timings || {};
  const input = t.prompt_n ?? u.prompt_tokens ?? u.input_tokens;
  const output = t.predicted_n ?? u.completion_tokens ?? u.output_tokens;
  let speed = t.predicted_per_second;
  if (!speed && output && firstMs && endMs > firstMs) speed = output / ((endMs - firstMs) / 1000);
  return { input, output, speed, seconds: (endMs - startedMs) / 1000, ttft: firstMs ? (firstMs - startedMs) / 1000 : null };
}
