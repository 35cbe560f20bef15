"""Policies: what replies to the environment's observations. A transformers model (``hf``), a served one behind an
OpenAI-compatible endpoint (``openai_policy`` over ``openai_client``), a colocated vLLM engine (``vllm_engine``),
the oracle teacher (``oracle``), and model and tokenizer loading (``models``)."""
