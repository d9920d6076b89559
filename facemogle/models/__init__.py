"""Face-MoGLE's own modules: the MoGLE mask encoder (`mogle`), the condition stream on a FLUX
transformer (`condition`) and the model that joins them (`facemogle`).
"""
