"""Results: the accuracy grid, emergence layers, figures, the versioned run record and the files of a run directory."""
