//! `--test-policies`: the Rego unit-test runner (the `test_` rules of a policy directory or
//! file, evaluated by regorus like `opa test`), its PASS/FAIL report and exit code.

/// `--test-policies`: run a policy directory's Rego unit tests through regorus, like `opa test`.
pub fn test_policies(dir: &std::path::Path) -> i32 {
    match stoa_filters::opa::run_rego_tests(dir) {
        Err(e) => {
            eprintln!("stoa-gateway: {e}");
            2
        }
        Ok(results) => {
            let failed = results.iter().filter(|r| !r.passed).count();
            for r in &results {
                let mark = if r.passed { "PASS" } else { "FAIL" };
                match &r.error {
                    Some(e) => println!("{mark} {} ({e})", r.name),
                    None => println!("{mark} {}", r.name),
                }
            }
            println!("{} passed, {failed} failed", results.len() - failed);
            if results.is_empty() {
                eprintln!("stoa-gateway: no test_ rules found in {}", dir.display());
                return 1;
            }
            i32::from(failed > 0)
        }
    }
}
