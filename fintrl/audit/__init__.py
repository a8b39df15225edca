"""`fintrl audit`: rows whose gold label the model confidently disputes (`confident`), scored out of sample
(`folds`)."""
