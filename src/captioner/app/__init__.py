"""What users run: the `captioner` command (`cli`), the HTTP service (`serve`), the SavedModel
export (`export`), the model card of a release (`model_card`) and the offline plots template
builder (`plots_template`)."""
