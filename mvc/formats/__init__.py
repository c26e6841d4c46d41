"""mvc.formats: model file formats (layer 1).

Submodules are imported explicitly (``mvc.formats.safetensors``, ``.hf``, ``.dtypes``);
only ``torch_io`` uses torch, and only inside its functions, so nothing here slows down
the fast commands.
"""
