// The official OpenAI client (npm openai@6) against a running `tessera serve`.
// Usage: node openai_client_test.mjs BASE_URL NODE_MODULES_DIR
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const [baseURL, modules] = process.argv.slice(2);
const require = createRequire(modules + '/');
const OpenAI = require('openai');
const client = new OpenAI({ baseURL, apiKey: 'test-key' });

async function main() {
  const models = await client.models.list();
  const ids = models.data.map((m) => m.id);
  assert.ok(ids.includes('tiny'), `models: ${ids}`);

  // Completions: text prompt, greedy, usage.
  const c = await client.completions.create({ model: 'tiny', prompt: 'Hello, my name is', max_tokens: 8, temperature: 0 });
  assert.equal(c.object, 'text_completion');
  assert.equal(c.choices.length, 1);
  assert.equal(typeof c.choices[0].text, 'string');
  assert.ok(['length', 'stop'].includes(c.choices[0].finish_reason));
  assert.ok(c.usage.prompt_tokens > 0 && c.usage.completion_tokens > 0 && c.usage.completion_tokens <= 8);
  assert.equal(c.usage.total_tokens, c.usage.prompt_tokens + c.usage.completion_tokens);

  // Greedy is deterministic.
  const c2 = await client.completions.create({ model: 'tiny', prompt: 'Hello, my name is', max_tokens: 8, temperature: 0 });
  assert.equal(c2.choices[0].text, c.choices[0].text);

  // Chat completions with n = 2 and logprobs.
  const chat = await client.chat.completions.create({
    model: 'tiny', messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi there!' }],
    max_completion_tokens: 6, n: 2, seed: 3, logprobs: true, top_logprobs: 2,
  });
  assert.equal(chat.object, 'chat.completion');
  assert.equal(chat.choices.length, 2);
  for (const ch of chat.choices) {
    assert.equal(ch.message.role, 'assistant');
    assert.equal(typeof ch.message.content, 'string');
    assert.ok(ch.logprobs.content.length >= 1);
    assert.equal(ch.logprobs.content[0].top_logprobs.length, 2);
  }
  assert.deepEqual(chat.choices.map((x) => x.index).sort(), [0, 1]);

  // Streaming chat with include_usage.
  const stream = await client.chat.completions.create({
    model: 'tiny', messages: [{ role: 'user', content: 'Count to five.' }], max_tokens: 10, temperature: 0,
    stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  let finish = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      text += choice.delta?.content ?? '';
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  assert.ok(chunks >= 2);
  assert.ok(usage && usage.completion_tokens > 0, 'usage chunk');
  assert.ok(finish);
  // The same request without streaming gives the same text.
  const same = await client.chat.completions.create({
    model: 'tiny', messages: [{ role: 'user', content: 'Count to five.' }], max_tokens: 10, temperature: 0,
  });
  assert.equal(same.choices[0].message.content, text);

  // Streaming completions.
  const cs = await client.completions.create({ model: 'tiny', prompt: 'abc', max_tokens: 5, temperature: 0, stream: true });
  let ctext = '';
  for await (const chunk of cs) ctext += chunk.choices[0]?.text ?? '';
  const cfull = await client.completions.create({ model: 'tiny', prompt: 'abc', max_tokens: 5, temperature: 0 });
  assert.equal(ctext, cfull.choices[0].text);

  // Stop strings: cut at the first occurrence in the free-running output.
  const free = await client.completions.create({ model: 'tiny', prompt: 'The weather', max_tokens: 16, temperature: 0 });
  const t = free.choices[0].text;
  if (t.length >= 6) {
    const stop = t.slice(3, 5);
    const stopped = await client.completions.create({ model: 'tiny', prompt: 'The weather', max_tokens: 16, temperature: 0, stop: [stop] });
    assert.equal(stopped.choices[0].text, t.slice(0, t.indexOf(stop)));
    assert.equal(stopped.choices[0].finish_reason, 'stop');
  }

  // Completions logprobs.
  const lp = await client.completions.create({ model: 'tiny', prompt: 'abc', max_tokens: 3, logprobs: 2 });
  assert.equal(lp.choices[0].logprobs.tokens.length, lp.usage.completion_tokens);
  assert.ok(lp.choices[0].logprobs.token_logprobs.every((v) => v <= 0));

  // Errors arrive as APIError with the right status.
  await assert.rejects(client.completions.create({ model: 'no-such-model', prompt: 'x' }),
    (e) => e instanceof OpenAI.APIError && e.status === 404);
  await assert.rejects(client.completions.create({ model: 'tiny', prompt: 'x', temperature: -1 }),
    (e) => e instanceof OpenAI.APIError && e.status === 400 && /temperature/.test(e.message));
  await assert.rejects(client.chat.completions.create({ model: 'tiny', messages: [], max_tokens: 2 }),
    (e) => e instanceof OpenAI.APIError && e.status === 400);
  // Content parts, and an assistant tool call sent back with its arguments as a JSON string.
  const parts = await client.chat.completions.create({
    model: 'tiny', max_tokens: 2, messages: [
      { role: 'user', content: [{ type: 'text', text: 'Weather' }, { type: 'text', text: 'in Paris?' }] },
      { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'weather', arguments: '{"city":"Paris"}' } }] },
      { role: 'tool', tool_call_id: 'c1', content: 'sunny' },
      { role: 'user', content: 'Thanks' }],
    tools: [{ type: 'function', function: { name: 'weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } } }],
  });
  assert.equal(parts.choices[0].message.role, 'assistant');
  // A non-text part is a 400 that names the problem.
  await assert.rejects(client.chat.completions.create({
    model: 'tiny', max_tokens: 2,
    messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'http://x/y.png' } }] }],
  }), (e) => e instanceof OpenAI.APIError && e.status === 400 && /image_url/.test(e.message));
  // Structured outputs and a named tool choice, as the client sends and reads them.
  const person = await client.chat.completions.create({
    model: 'tiny', max_tokens: 120, temperature: 1, seed: 3,
    messages: [{ role: 'user', content: 'A colour as JSON' }],
    response_format: { type: 'json_schema', json_schema: { name: 'c', schema: {
      type: 'object', properties: { colour: { enum: ['red', 'blue'] }, dark: { type: 'boolean' } },
      required: ['colour', 'dark'], additionalProperties: false } } },
  });
  assert.equal(person.choices[0].finish_reason, 'stop');
  const colour = JSON.parse(person.choices[0].message.content);
  assert.ok(['red', 'blue'].includes(colour.colour) && typeof colour.dark === 'boolean');
  const call = await client.chat.completions.create({
    model: 'tiny', max_tokens: 120, temperature: 1, seed: 4,
    messages: [{ role: 'user', content: 'Weather in Paris?' }],
    tools: [{ type: 'function', function: { name: 'weather', parameters: { type: 'object',
      properties: { unit: { enum: ['c', 'f'] } }, required: ['unit'], additionalProperties: false } } }],
    tool_choice: { type: 'function', function: { name: 'weather' } },
  });
  // tool_choice "auto" (the server runs --tool-call-parser llama3_json): guided_choice makes the
  // random model write a Llama 3 call, which comes back parsed, whole and streamed.
  const llamaCall = '{"name": "weather", "parameters": {"unit": "c"}}';
  const auto = await client.chat.completions.create({
    model: 'tiny', max_tokens: 60, messages: [{ role: 'user', content: 'Weather in Paris?' }],
    tools: [{ type: 'function', function: { name: 'weather', parameters: { type: 'object',
      properties: { unit: { enum: ['c', 'f'] } } } } }],
    guided_choice: [llamaCall],
  });
  assert.equal(auto.choices[0].finish_reason, 'tool_calls');
  assert.equal(auto.choices[0].message.content, null);
  assert.equal(auto.choices[0].message.tool_calls[0].function.name, 'weather');
  assert.equal(auto.choices[0].message.tool_calls[0].function.arguments, '{"unit": "c"}');
  const autoStream = await client.chat.completions.create({
    model: 'tiny', max_tokens: 60, stream: true, messages: [{ role: 'user', content: 'Weather?' }],
    tools: [{ type: 'function', function: { name: 'weather', parameters: { type: 'object' } } }],
    guided_choice: [llamaCall],
  });
  let streamedArgs = '', streamedFinish = null;
  for await (const chunk of autoStream) {
    for (const t of chunk.choices[0]?.delta?.tool_calls ?? []) streamedArgs += t.function?.arguments ?? '';
    streamedFinish = chunk.choices[0]?.finish_reason ?? streamedFinish;
  }
  assert.equal(streamedArgs, '{"unit": "c"}');
  assert.equal(streamedFinish, 'tool_calls');
  const tc = call.choices[0].message.tool_calls;
  assert.equal(tc.length, 1);
  assert.equal(tc[0].function.name, 'weather');
  assert.ok(['c', 'f'].includes(JSON.parse(tc[0].function.arguments).unit));
  console.log('openai client: all checks passed');
}

main().catch((e) => { console.error(e); process.exit(1); });
