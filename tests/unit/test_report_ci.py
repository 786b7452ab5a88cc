"""mean_ci95: the Student-t interval world-report and bench/world_seeds.py print for a gain."""

import math

from seal.report import mean_ci95


def test_three_values_use_t_with_two_degrees_of_freedom():
    mean, low, high = mean_ci95([1.0, 2.0, 3.0])  # sd 1, n 3: half-width 4.303 / sqrt(3)
    assert mean == 2.0 and math.isclose(high - mean, 4.303 / math.sqrt(3)) and math.isclose(mean - low, high - mean)


def test_degrees_of_freedom_between_rows_take_the_wider_row_and_over_120_the_normal():
    values = [float(i % 2) for i in range(26)]  # df 25: the table's 24 row (2.064, wider than 25's 2.060)
    mean, low, high = mean_ci95(values)
    sd = 0.5 * math.sqrt(26 / 25)
    assert math.isclose(high - mean, 2.064 * sd / math.sqrt(26))
    mean, low, high = mean_ci95([float(i % 2) for i in range(100)])  # df 99: the 60 row
    assert math.isclose(high - mean, 2.000 * 0.5 * math.sqrt(100 / 99) / 10)
    mean, low, high = mean_ci95([float(i % 2) for i in range(400)])  # df 399: the normal
    assert math.isclose(high - mean, 1.96 * 0.5 * math.sqrt(400 / 399) / 20)


def test_one_value_has_no_spread():
    assert mean_ci95([0.25]) == (0.25, 0.25, 0.25)
