// The openai SDK's AzureOpenAI client, used exactly as its documentation
// says, pointed at the gateway.  Prints one JSON line per call for
// t/14_openai_sdk.t.  maxRetries: 0, so that the SDK's own retries cannot
// hide what the gateway answered.
import { AzureOpenAI } from 'openai';

const [endpoint, apiKey] = process.argv.slice(2);
const client = new AzureOpenAI({
  endpoint, apiKey, apiVersion: '2024-06-01', deployment: 'gpt-35-turbo', maxRetries: 0,
});
const messages = [
  { role: 'system', content: 'You are a helpful assistant.' },
  { role: 'user', content: 'Hello! Please tell me the history of United States.' },
];
const print = (record) => console.log(JSON.stringify(record));

try {
  const { data, response } = await client.chat.completions
    .create({ model: 'gpt-35-turbo', messages })
    .withResponse();
  print({ kind: 'chat', backend: response.headers.get('x-aoai-backend'),
          object: data.object, content: data.choices[0].message.content,
          total_tokens: data.usage.total_tokens });
} catch (error) {
  print({ kind: 'chat', error: error.status ?? String(error) });
}

try {
  const stream = await client.chat.completions.create({ model: 'gpt-35-turbo', messages, stream: true });
  const pieces = [];
  for await (const chunk of stream) {
    const piece = chunk.choices[0]?.delta?.content;
    if (piece) pieces.push(piece);
  }
  print({ kind: 'stream', chunks: pieces.length, text: pieces.join('') });
} catch (error) {
  print({ kind: 'stream', error: error.status ?? String(error) });
}

try {
  const embedding = await client.embeddings.create({ model: 'gpt-35-turbo', input: 'hello' });
  print({ kind: 'embeddings', dimensions: embedding.data[0].embedding.length });
} catch (error) {
  print({ kind: 'embeddings', error: error.status ?? String(error) });
}
