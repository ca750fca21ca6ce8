// Calls a chat model with the real npm openai SDK (Node's own OpenSSL).
import OpenAI from "openai";

process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0";
const client = new OpenAI({ baseURL: process.argv[2] + "/v1", apiKey: "sk-test-SECRET-node" });
const r = await client.chat.completions.create({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "Say hi" }],
});
console.log(r.choices[0].message.content);
