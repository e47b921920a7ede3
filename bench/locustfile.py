"""Locust load test for an OpenAI-compatible server (tessera or vLLM), as the public GKE recipe
runs it: non-streaming chat completions, RPS and latency percentiles in Locust's report.

    locust -f bench/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 4 -t 60s

Environment: MODEL (default: the server's first model), MAX_TOKENS (64), API_KEY (none),
TOKEN_IDS (set to 1: completions with random token-id prompts, for model folders without a
tokenizer).
"""
import os
import random

from locust import HttpUser, between, events, task

PROMPTS = [
    "Explain what a KV cache is in two sentences.",
    "Write a haiku about Kubernetes autoscaling.",
    "What is tensor parallelism?",
    "Summarize the plot of a heist movie in one paragraph.",
    "List three uses of a load balancer.",
    "Translate 'good morning' into French, Spanish and German.",
    "Why does decode speed depend on memory bandwidth?",
    "Give me a short Python function that reverses a string.",
]

MAX_TOKENS = int(os.environ.get("MAX_TOKENS", "64"))
TOKEN_IDS = os.environ.get("TOKEN_IDS") == "1"
HEADERS = {"Authorization": f"Bearer {os.environ['API_KEY']}"} if os.environ.get("API_KEY") else {}
_model = {"id": os.environ.get("MODEL")}


@events.test_start.add_listener
def _discover_model(environment, **_):
    if _model["id"] or environment.host is None:
        return
    import json
    import urllib.request

    request = urllib.request.Request(environment.host.rstrip("/") + "/v1/models", headers=HEADERS)
    with urllib.request.urlopen(request, timeout=30) as response:
        _model["id"] = json.load(response)["data"][0]["id"]


class ChatUser(HttpUser):
    wait_time = between(0.0, 0.5)

    @task
    def chat(self):
        if TOKEN_IDS:
            return self.token_ids()
        body = {
            "model": _model["id"],
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0.7,
        }
        self._post("/v1/chat/completions", body, "chat")

    def token_ids(self):
        body = {
            "model": _model["id"],
            "prompt": [random.randint(1, 1000) for _ in range(random.randint(4, 64))],
            "max_tokens": MAX_TOKENS,
            "temperature": 0.7,
        }
        self._post("/v1/completions", body, "completion")

    def _post(self, path, body, name):
        """A request that fails unless it answers 200 with choices."""
        with self.client.post(path, json=body, headers=HEADERS, name=name,
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif not response.json().get("choices"):
                response.failure("no choices in the response")
