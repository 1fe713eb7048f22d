"""Serving finished encoders: plain model logic (decode, embed, search) and a thin
TorchServe adapter, so the same code can run behind another server later."""
