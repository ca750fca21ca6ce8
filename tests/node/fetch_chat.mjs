// Chat Completions calls with Node's built-in fetch (undici over Node's own
// OpenSSL), one per model, in order, on its keep-alive pool.
//     node fetch_chat.mjs BASE MODEL...
// The test server's certificate is self-signed: it is not checked.
process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0";
const [base, ...models] = process.argv.slice(2);
for (const model of models) {
  const response = await fetch(`${base}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, messages: [{ role: "user", content: `hi from ${model}` }] }),
  });
  const json = await response.json();
  if (response.status !== 200 || json.usage.prompt_tokens !== 21) {
    throw new Error(`unexpected answer ${response.status}: ${JSON.stringify(json)}`);
  }
}
