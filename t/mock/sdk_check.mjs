// The openai SDK (t/sdk/node_modules, as t/14 uses it) against one mock
// member, for t/00_mock.t: what the SDK parses of the mock's v1 API, its
// Responses stream and its files and batches.  One JSON line per check.
//   node sdk_check.mjs <path of openai/index.mjs> <member URL>
const [sdk, member] = process.argv.slice(2);
const { default: OpenAI, AzureOpenAI, toFile } = await import(sdk);
const print = (record) => console.log(JSON.stringify(record));
const v1 = new OpenAI({ baseURL: `${member}/openai/v1`, apiKey: 'k', maxRetries: 0 });
const classic = new AzureOpenAI({ endpoint: member, apiKey: 'k', apiVersion: '2025-04-01-preview',
                                  maxRetries: 0 });

async function check(kind, work) {
  try {
    print({ kind, ...(await work()) });
  } catch (error) {
    print({ kind, error: error.status ?? String(error), message: error.message });
  }
}

await check('chat', async () => {
  const chat = await v1.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
  return { content: chat.choices[0].message.content, total_tokens: chat.usage.total_tokens };
});

let first;
await check('response', async () => {
  first = await v1.responses.create({ model: 'gpt-4o', input: 'hi' });
  return { id: first.id, text: first.output_text, usage: first.usage };
});

await check('chained', async () => {
  const next = await classic.responses.create({ model: 'gpt-4o', input: 'more', previous_response_id: first.id });
  const again = await classic.responses.retrieve(next.id);
  return { id: again.id, previous: again.previous_response_id, usage: again.usage };
});

await check('stream', async () => {
  const stream = await v1.responses.create({ model: 'gpt-4o', input: 'hi', stream: true });
  const types = [];
  let text = '', usage;
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === 'response.output_text.delta') text += event.delta;
    if (event.type === 'response.completed') usage = event.response.usage;
  }
  return { types, text, usage };
});

await check('batch', async () => {
  const file = await v1.files.create({ file: await toFile(Buffer.from('{"custom_id":"1"}\n'), 'in.jsonl'),
                                       purpose: 'batch' });
  const batch = await v1.batches.create({ input_file_id: file.id, endpoint: '/v1/chat/completions',
                                          completion_window: '24h' });
  const content = await (await v1.files.content(file.id)).text();
  return { file: file.id, bytes: file.bytes, batch: batch.id, status: batch.status, content };
});

await check('missing', async () => {
  await v1.responses.retrieve('resp_never_made');
  return {};
});
