"""What the tests share: where the real data lives (`paths`), datasets prepared from it (`data`), small nets
(`nets`), training helpers (`training`), and fault injection (`faults`, `faulty_main`)."""
