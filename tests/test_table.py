from framewatch.ops.table import text_table


def test_columns_fit_their_widest_cell_numbers_go_right_and_the_last_column_is_not_padded() -> None:
    lines = text_table(["camera", "fps", "last error"], [["gate", 5.0, ""], ["parking-lot", 12.5, "401"]], right={1})
    assert lines == ["camera        fps  last error",
                     "gate          5.0",
                     "parking-lot  12.5  401"]
