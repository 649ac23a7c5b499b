"""Task fine-tuning and task-specific distillation, layered between pipeline and student.

tasks / task_data / metrics: the GLUE tasks (or a user's file), their rows and metrics; config: the settings of
`tc finetune` and `tc cache-logits`; prepare: a run's checked data and KD targets; fit: the loop shared by students
(students.py, task_model.py: encoder + head) and task teachers (teachers.py: a transformers classifier and its
cached logits); augment: Tang et al.'s synthetic examples for KD.
"""
