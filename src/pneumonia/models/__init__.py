from pneumonia.models.custom_cnn import CustomCNN

__all__ = ["CustomCNN"]
