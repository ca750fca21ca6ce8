"""Streams one message with the real anthropic SDK."""
import sys

import anthropic
try:
    import httpx2 as httpx  # the SDKs' own HTTP client in their newer releases
except ImportError:
    import httpx

client = anthropic.Anthropic(
    base_url=sys.argv[1],
    api_key="sk-ant-test-SECRET",
    http_client=httpx.Client(verify=False),
)
with client.messages.stream(
    model="claude-sonnet-4-5",
    max_tokens=64,
    messages=[{"role": "user", "content": "Say hi"}],
) as stream:
    text = "".join(stream.text_stream)
print(text)
