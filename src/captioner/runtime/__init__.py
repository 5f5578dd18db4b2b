"""The bottom layer, shared by every other: durable atomic writes (`io`), stage output fit for
terminals and logs (`console`), TensorFlow's pinned thread pools (`threads`) and the wrapper
every stage runs in (`stage`). Nothing here knows about captions.

Sub-package `__init__` files import nothing: a module's public API is its `__all__`.
"""
