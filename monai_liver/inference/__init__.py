"""Inference on new scans (``monai-liver infer``) and TorchScript export (``monai-liver export``)."""
