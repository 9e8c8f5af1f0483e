"""Writing safely: atomic files, what may be written where, and the reservation of an output folder.

The lowest layer of the package: everything that writes (run directories, the
residual cache, studies, trained checkpoints) goes through it. It imports
neither torch nor pandas.
"""
