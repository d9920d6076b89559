"""Face-MoGLE's own modules: the MoGLE mask encoder (`mogle`), the condition stream on a FLUX
transformer (`condition`), its condition-only LoRA adapter (`lora`) and the model that joins them
(`facemogle`, whose docstring follows the data path with its shapes).
"""
