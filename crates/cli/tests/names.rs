//! Function names by Lambda's rule (`[A-Za-z0-9_-]`, 1–64), case-sensitive
//! on every path: two names that differ only in case are two functions.

mod common;

use common::Flick;

#[test]
fn names_differing_in_case_are_two_functions_everywhere() {
    let flick = Flick::start();
    let answer =
        |who: &str| format!("def handler(event, context):\n    return {{'statusCode': 200, 'body': '{who}'}}\n");
    flick.deploy_py("Hello_World", "", &answer("upper"));
    flick.deploy_py("hello_world", "", &answer("lower"));
    let long = format!("-{}", "X_y-".repeat(15) + "end");
    assert_eq!(long.len(), 64);
    flick.deploy_py(&long, "", &answer("long"));

    assert_eq!(flick.invoke("Hello_World", "").text(), "upper");
    assert_eq!(flick.invoke("hello_world", "").text(), "lower");
    assert_eq!(flick.invoke(&long, "").text(), "long");
    assert_eq!(flick.invoke("HELLO_WORLD", "").status, 404);
    let names: Vec<String> = flick.get("/v1/functions").json()["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    for n in ["Hello_World", "hello_world", long.as_str()] {
        assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
    }
    // Records and deletes keep to their own name.
    let id = flick.invoke("Hello_World", "").activation_id();
    assert_eq!(flick.activation(&id)["function"], "Hello_World");
    assert_eq!(flick.request("DELETE", "/v1/functions/hello_world", Vec::new(), true).status, 200);
    assert_eq!(flick.invoke("hello_world", "").status, 404);
    assert_eq!(flick.invoke("Hello_World", "").text(), "upper");

    // One over the limit, or a character outside the rule, is refused by name.
    for bad in [format!("{long}x"), "a.b".to_string(), "caf\u{e9}".to_string()] {
        let dir = common::write_function(
            flick.data_dir(),
            "bad",
            &[("flick.toml", &common::manifest(&bad, "python3", "main.handler", "")), ("main.py", &answer("x"))],
        );
        let out = flick.cli(&["deploy", dir.to_str().unwrap()]);
        assert!(!out.status.success(), "{bad} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("name") && (err.contains("64") || err.contains("letters, digits")), "{bad}: {err}");
    }
}
