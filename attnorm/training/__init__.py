"""Training: a generic phase loop (:mod:`.loop`) and the class-conditional GAN setup (:mod:`.gan`)."""
