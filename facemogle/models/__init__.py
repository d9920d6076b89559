"""Models: the MoGLE mask encoder (`mogle`) and Face-MoGLE on a FLUX transformer (`facemogle`)."""
