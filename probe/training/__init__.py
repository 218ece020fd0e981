"""Training the reference checkpoints (:mod:`.train`), evaluating them against the biharmonic
baseline (:mod:`.evaluate`) and writing their model cards (:mod:`.card`)."""
