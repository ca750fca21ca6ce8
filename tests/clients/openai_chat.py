"""Calls a chat model with the real openai SDK: one plain, one streamed call."""
import sys

try:
    import httpx2 as httpx  # the SDKs' own HTTP client in their newer releases
except ImportError:
    import httpx
import openai

base, stream = sys.argv[1], sys.argv[2] == "stream"
client = openai.OpenAI(
    base_url=base + "/v1",
    api_key="sk-test-SECRET-openai",
    http_client=httpx.Client(verify=False),
)
if stream:
    chunks = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
else:
    r = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hi"}]
    )
    text = r.choices[0].message.content
print(text)
