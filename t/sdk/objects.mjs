// The openai SDK, unmodified, against the gateway: one step of a Responses
// / files / batches conversation per run, so that the test can throttle a
// member between steps.  Prints one JSON line: what the SDK got and which
// member served (x-aoai-backend).  maxRetries: 0: the SDK's own retries
// must not hide what the gateway answered.
//   node objects.mjs GATEWAY KEY STEP [ARGS...]
import OpenAI, { toFile } from 'openai';

const [gateway, apiKey, step, ...args] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${gateway}/openai/v1`, apiKey, maxRetries: 0 });
const print = (record) => console.log(JSON.stringify(record));
const served = (response) => response.headers.get('x-aoai-backend');

const steps = {
  async create([model]) {
    const { data, response } = await client.responses.create({ model, input: 'Hello' }).withResponse();
    return { id: data.id, backend: served(response), text: data.output_text };
  },
  async retrieve([id]) {
    const { data, response } = await client.responses.retrieve(id).withResponse();
    return { id: data.id, backend: served(response) };
  },
  async chain([id, model]) {
    const { data, response } = await client.responses
      .create({ model, input: 'And then?', previous_response_id: id }).withResponse();
    return { id: data.id, previous: data.previous_response_id, backend: served(response) };
  },
  async stream([model]) {
    const stream = await client.responses.create({ model, input: 'Hello', stream: true });
    let id, completed = 0;
    for await (const event of stream) {
      if (event.type === 'response.created') id = event.response.id;
      if (event.type === 'response.completed') completed = 1;
    }
    return { id, completed };
  },
  async upload() {
    const { data, response } = await client.files
      .create({ file: await toFile(Buffer.from('{"custom_id":"1"}\n'), 'in.jsonl'), purpose: 'batch' })
      .withResponse();
    return { id: data.id, backend: served(response) };
  },
  async file([id]) {
    const { data, response } = await client.files.retrieve(id).withResponse();
    const content = await (await client.files.content(id)).text();
    return { id: data.id, backend: served(response), content };
  },
  async batch([file]) {
    const { data, response } = await client.batches
      .create({ input_file_id: file, endpoint: '/v1/chat/completions', completion_window: '24h' })
      .withResponse();
    return { id: data.id, backend: served(response), input_file_id: data.input_file_id };
  },
};

try {
  print({ step, ...(await steps[step](args)) });
} catch (error) {
  print({ step, error: error.status ?? String(error), code: error.code ?? null,
          retry_after: error.headers?.['retry-after'] ?? null });
}
