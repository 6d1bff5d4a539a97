pub mod verdicts;
