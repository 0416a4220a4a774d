"""The models: architectures as data (:mod:`.registry`, ``retrieval/model_configs/*.json``), the one
factory (:mod:`.factory`: ``create_model``), fingerprints of the weights without torch
(:mod:`.modelid`), the :class:`~.encoder.Encoder` that embeds images and texts, the built-in
model's towers (:mod:`.towers`), BatchNorm folding (:mod:`.fold`), and the fast text path: the
text tower exported once (:mod:`.onnxexport`) and run without torch (:mod:`.onnxtext`).

Nothing is imported here: a text query reaches :mod:`.onnxtext` without importing torch.
"""
