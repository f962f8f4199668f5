#!/usr/bin/env python3
"""Spans of LLM calls as the OpenTelemetry GenAI instrumentations write them,
made and exported by the real Python OTel SDK (opentelemetry-sdk +
opentelemetry-exporter-otlp-proto-http) to a tokentap collector's /v1/traces.
Prints one JSON line: {"pid": PID, "spans": [{"trace_id", "span_id", "attributes", ...}]}.

Usage:
  otel_spans.py --endpoint URL --token T catalogue
      a set of GenAI spans (current and older attribute names, several providers),
      a plain HTTP span and an agent span (neither is an LLM call)
  otel_spans.py --endpoint URL --token T --openai-base URL --ca CA --key KEY sdk_call
      two real chat calls with the openai SDK (captured by the agent when it runs);
      the first one's span is exported at once, the second's response id and usage
      are printed and its span is not sent (see `span_for`)
  otel_spans.py --endpoint URL --token T span_for RESPONSE_ID INPUT OUTPUT MODEL
      one chat span for a call made earlier
"""
import argparse
import json
import os
import ssl
import sys
import time

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

SERVICE = "otel-e2e"


def provider(a):
    resource = Resource.create({
        "service.name": SERVICE,
        "k8s.namespace.name": "shop",
        "k8s.pod.name": "checkout-5d8f7",
        "k8s.deployment.name": "checkout",
        "container.id": "c0ffee0123456789",
        "process.pid": os.getpid(),
        "process.executable.path": sys.executable,
        "host.name": "node-7",
    })
    tp = TracerProvider(resource=resource)
    exporter = OTLPSpanExporter(endpoint=a.endpoint, headers={"authorization": "Bearer " + a.token}, timeout=30)
    # Exported as each span ends: the test knows when its spans have been sent.
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp


def record(span, attrs):
    ctx = span.get_span_context()
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x"), "attributes": attrs}


def emit(tracer, name, attrs, error=None):
    with tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attrs) as span:
        time.sleep(0.01)
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        return record(span, attrs)


def catalogue(a, tracer):
    spans = []
    # The official openai-v2 instrumentation, current conventions.
    spans.append(emit(tracer, "chat gpt-4o-mini", {
        "gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.response.id": "chatcmpl-otel-1", "gen_ai.request.stream": False,
        "gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 300,
        "gen_ai.usage.cache_read.input_tokens": 1024, "gen_ai.conversation.id": "conv-42",
        "server.address": "api.openai.com", "http.response.status_code": 200,
        "openai.response.service_tier": "default",
    }))
    # Anthropic, current: input counts cache reads and writes (v1.40).
    spans.append(emit(tracer, "chat claude-sonnet-4-5", {
        "gen_ai.provider.name": "anthropic", "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "claude-sonnet-4-5", "gen_ai.response.model": "claude-sonnet-4-5-20250929",
        "gen_ai.response.id": "msg_otel_2", "gen_ai.request.stream": True,
        "gen_ai.usage.input_tokens": 5000, "gen_ai.usage.output_tokens": 400,
        "gen_ai.usage.cache_read.input_tokens": 3000, "gen_ai.usage.cache_creation.input_tokens": 1000,
    }))
    # An older instrumentation: gen_ai.system, prompt/completion tokens.
    spans.append(emit(tracer, "openai.chat", {
        "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.response.id": "chatcmpl-otel-3",
        "gen_ai.usage.prompt_tokens": 50, "gen_ai.usage.completion_tokens": 7,
    }))
    # Bedrock, Gemini (reasoning inside output, v1.41), embeddings.
    spans.append(emit(tracer, "chat anthropic.claude-3-haiku", {
        "gen_ai.provider.name": "aws.bedrock", "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "anthropic.claude-3-haiku-20240307-v1:0",
        "gen_ai.usage.input_tokens": 90, "gen_ai.usage.output_tokens": 30,
    }))
    spans.append(emit(tracer, "generate_content gemini-2.5-flash", {
        "gen_ai.provider.name": "gcp.gemini", "gen_ai.operation.name": "generate_content",
        "gen_ai.request.model": "gemini-2.5-flash", "gen_ai.response.id": "gem-otel-5",
        "gen_ai.usage.input_tokens": 400, "gen_ai.usage.output_tokens": 250,
        "gen_ai.usage.reasoning.output_tokens": 200,
    }))
    spans.append(emit(tracer, "embeddings text-embedding-3-small", {
        "gen_ai.provider.name": "openai", "gen_ai.operation.name": "embeddings",
        "gen_ai.request.model": "text-embedding-3-small", "gen_ai.usage.input_tokens": 16,
    }))
    # A failed call: rate limited, no usage.
    spans.append(emit(tracer, "chat gpt-4o", {
        "gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o", "error.type": "429", "http.response.status_code": 429,
    }, error="RateLimitError"))
    # Not LLM calls: a plain HTTP span and an agent span over the calls above.
    other = [
        emit(tracer, "GET /healthz", {"http.request.method": "GET", "http.response.status_code": 200}),
        emit(tracer, "invoke_agent planner", {
            "gen_ai.provider.name": "openai", "gen_ai.operation.name": "invoke_agent",
            "gen_ai.usage.input_tokens": 99999, "gen_ai.usage.output_tokens": 9999,
        }),
    ]
    return {"spans": spans, "other": other}


def sdk_call(a, tracer):
    import openai
    ctx = ssl.create_default_context(cafile=a.ca)
    oa = openai.OpenAI(base_url=a.openai_base, api_key=a.key, max_retries=0,
                       http_client=openai.DefaultHttpxClient(verify=ctx))
    msgs = [{"role": "user", "content": "Say hello."}]
    out = []
    for i in range(2):
        # As the openai-v2 instrumentation does: a client span around the call.
        with tracer.start_as_current_span("chat gpt-4o-mini", kind=SpanKind.CLIENT) as span:
            r = oa.chat.completions.create(model="gpt-4o-mini", messages=msgs)
            attrs = {
                "gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model": r.model,
                "gen_ai.response.id": r.id, "gen_ai.usage.input_tokens": r.usage.prompt_tokens,
                "gen_ai.usage.output_tokens": r.usage.completion_tokens,
                "server.address": "api.openai.com",
            }
            if i == 0:
                span.set_attributes(attrs)
            out.append(record(span, attrs))
        # The second call's span is dropped here (not sampled-in attributes):
        # the test sends it later, once the agent's record is stored.
    return {"calls": out}


def span_for(a, tracer):
    rid, inp, outp, model = a.args
    return {"spans": [emit(tracer, "chat " + model, {
        "gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model": model,
        "gen_ai.response.id": rid, "gen_ai.usage.input_tokens": int(inp),
        "gen_ai.usage.output_tokens": int(outp),
    })]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--openai-base")
    p.add_argument("--ca")
    p.add_argument("--key")
    p.add_argument("mode", choices=["catalogue", "sdk_call", "span_for"])
    p.add_argument("args", nargs="*")
    a = p.parse_args()
    tp = provider(a)
    tracer = tp.get_tracer("opentelemetry.instrumentation.openai_v2", "2.1b0")
    result = {"catalogue": catalogue, "sdk_call": sdk_call, "span_for": span_for}[a.mode](a, tracer)
    ok = tp.force_flush(30_000)
    tp.shutdown()
    result["pid"] = os.getpid()
    result["flushed"] = ok
    print(json.dumps(result))


if __name__ == "__main__":
    main()
