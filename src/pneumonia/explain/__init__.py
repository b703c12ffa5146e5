"""Explanations of the classifier's decisions: Grad-CAM maps (`pneumonia.explain.gradcam`,
needs captum) and their pictures (`pneumonia.explain.figures`, needs matplotlib).

Import the submodules explicitly; importing this package loads neither captum nor matplotlib.
"""
