"""LLMs behind an endpoint, for the data stages and the evaluation alike: the client, its cache, the parsed
replies, the requests, the endpoint's config and the local llama.cpp server."""
