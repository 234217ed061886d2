"""The embedding engine: an encoder path beside the generation engine, with no KV cache kept between steps.

`bert` (the BERT family over packed tokens) and `decoder` (the Llama family's hidden states) are the models, `packing`
and `pooling` what every forward shares, `engine` the step loop, `embedder` the offline API, `task` which engine a
model needs.
"""
