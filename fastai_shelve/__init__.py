"Preprocess big images once into a safe LMDB shelf and train fastai from it, one read per batch."
__version__ = "0.2.7"
