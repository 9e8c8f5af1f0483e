"""Problems by digit scale: operations, tasks (scales, templates, splits), tokenizer-correct answer targets, digits and carries.

The first stage of the flow problems -> model -> residuals -> methods -> results -> runs.
"""
