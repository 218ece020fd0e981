"""The public PyTorch ports of DeepFill v2 and the PConv U-Net, loaded from their published weights."""
