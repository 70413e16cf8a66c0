from baselines.dense_regression.modeling import DenseRegression

__all__ = ["DenseRegression"]
