"""Training: the shared Trainer setup, fine-tuning the teacher, distilling the student, exports."""
