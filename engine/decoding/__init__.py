"""Decoding features that enter the engine's step through seams: beam search, guided decoding, speculation.

Each is one object the engine holds (`BeamSearch`, `GuidedDecoding`, a speculator); none of them is a branch in
`LLMEngine.step()`. Nothing is imported here, so `guided_params` (used by `SamplingParams`) stays torch-free.
"""
