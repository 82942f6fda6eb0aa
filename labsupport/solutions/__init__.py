"""The answer key: the reference solution of each notebook's exercise, one module each.

A notebook uses these only when its parameters cell says ``SOLUTION = True`` (CI and
``make bench`` do). Try the exercise yourself first: the checker's feedback is the lesson.
"""
