"""How vqrl feeds a Qwen-VL model: prompt encoding with per-sample vision tensors, encode-once, teacher forcing and
vLLM requests. Trainers and evaluation both build on it; it imports neither (imports only go down the layers).
"""
