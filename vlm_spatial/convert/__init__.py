"""Hugging Face <-> vlm_spatial weights (safetensors only, never pickle).

`hf_vision`, `hf_decoder`, `hf_llava`: configs and name maps (`namemap.Entry` lists); `hf_io`:
reading and writing HF directories; `loader`: streaming, sharded loading; `assemble`, `export`
and `python -m vlm_spatial.convert`: the assemble / from-hf / to-hf commands.
"""
