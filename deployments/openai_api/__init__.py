"""The OpenAI wire layer: what crosses HTTP, with no Serve, Ray or vLLM in it.

==================  ================================================================
``requests``        the request models (pydantic), validated once; errors as 400s
``responses``       whole (non-streamed) responses, models list, OpenAPI document
``sse``             streamed chunks as server-sent events, and tool-call deltas
``routes``          one reading of a request's route for the proxy gate and the ingress
``json_body``       a request body parsed with caps on size and nesting
``request_limits``  caps on messages, prompt, tools, stops and tokens per request
``schema_limits``   caps on a JSON schema before it becomes a grammar
==================  ================================================================
"""
