//! The scenario language: Rhai names for the verbs of [`World`].
//!
//! Each binding notes the script line of the call (the events it causes
//! carry it), converts Rhai values to Rust ones and a [`Verdict`]'s message
//! to a script error; Rhai gives an error without a position the position of
//! the call that raised it, which is what the user sees.

use std::collections::BTreeMap;
use std::rc::Rc;

use rhai::{
    Array, Blob, Dynamic, Engine, EvalAltResult, ImmutableString, Map, NativeCallContext, Position, FLOAT, INT,
};

use crate::faults::FaultKind;
use crate::report::simple_type;
use crate::tree;
use crate::world::{ClientRef, DownloadOptions, DownloadResult, NodeRef, TrackerRef, Transfer, Verdict, World};

type ScriptResult<T> = Result<T, Box<EvalAltResult>>;

/// A script error with `message`, placed at the calling script position.
pub fn script_error(message: impl Into<String>) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(message.into().into(), Position::NONE).into()
}

fn lift<T>(verdict: Verdict<T>) -> ScriptResult<T> {
    verdict.map_err(script_error)
}

/// A node started, or why not. A simulation out of room ends the attempt
/// in a way no `try` can catch: the run starts over, and a script that
/// caught it would go on (and print) differently from the attempt that
/// counts.
fn started<T>(world: &World, verdict: Verdict<T>) -> ScriptResult<T> {
    verdict.map_err(|error| match world.needs_room() {
        Some(_) => EvalAltResult::ErrorTerminated(error.into(), Position::NONE).into(),
        None => script_error(error),
    })
}

/// Notes the line of the call `ctx` is for: the events it causes carry it.
fn at(world: &World, ctx: &NativeCallContext) {
    world.at_line(ctx.call_position().line().map(|line| line as u32));
}

/// Registers every function of the scenario language on `engine`.
pub fn register(engine: &mut Engine, world: Rc<World>) {
    engine
        .register_type_with_name::<TrackerRef>("Tracker")
        .register_type_with_name::<ClientRef>("Client")
        .register_type_with_name::<Transfer>("Transfer");
    register_nodes(engine, &world);
    register_client_methods(engine, &world);
    register_transfers(engine, &world);
    register_faults(engine, &world);
    register_time_and_network(engine, &world);
    register_checks(engine, &world);
}

fn register_nodes(engine: &mut Engine, world: &Rc<World>) {
    let w = world.clone();
    engine.register_fn("tracker", move |ctx: NativeCallContext, port: INT| {
        at(&w, &ctx);
        started(&w, w.tracker(port))
    });
    let w = world.clone();
    engine.register_fn("client", move |ctx: NativeCallContext, id: INT| {
        at(&w, &ctx);
        started(&w, w.client(id))
    });
    engine.register_get("id", |c: &mut ClientRef| c.id as INT);
    engine.register_fn("to_string", |c: &mut ClientRef| format!("client {}", c.id));
    engine.register_fn("to_debug", |c: &mut ClientRef| format!("client {}", c.id));
    engine.register_fn("to_string", |_: &mut TrackerRef| "tracker".to_string());
    engine.register_fn("to_debug", |_: &mut TrackerRef| "tracker".to_string());
    engine.register_fn("to_string", |_: &mut Transfer| "transfer".to_string());
    engine.register_fn("to_debug", |_: &mut Transfer| "transfer".to_string());
}

fn register_client_methods(engine: &mut Engine, world: &Rc<World>) {
    let w = world.clone();
    engine.register_fn(
        "register",
        move |ctx: NativeCallContext, c: &mut ClientRef, t: TrackerRef| {
            at(&w, &ctx);
            lift(w.register(c, &t)).map(|()| "ACK")
        },
    );
    let w = world.clone();
    engine.register_fn(
        "write",
        move |ctx: NativeCallContext, c: &mut ClientRef, name: &str, text: &str| {
            at(&w, &ctx);
            lift(w.write(c, name, text.as_bytes().to_vec()))
        },
    );
    let w = world.clone();
    engine.register_fn(
        "write",
        move |ctx: NativeCallContext, c: &mut ClientRef, name: &str, blob: Blob| {
            at(&w, &ctx);
            lift(w.write(c, name, blob))
        },
    );
    let w = world.clone();
    engine.register_fn(
        "write_random",
        move |ctx: NativeCallContext, c: &mut ClientRef, name: &str, bytes: INT| {
            at(&w, &ctx);
            lift(w.write_random(c, name, bytes))
        },
    );
    let w = world.clone();
    engine.register_fn(
        "upload",
        move |ctx: NativeCallContext, c: &mut ClientRef, name: &str| {
            at(&w, &ctx);
            lift(w.upload(c, name)).map(|()| "ACK")
        },
    );
    let w = world.clone();
    engine.register_fn(
        "download",
        move |ctx: NativeCallContext, c: &mut ClientRef, name: &str| {
            at(&w, &ctx);
            lift(w.download(c, name, DownloadOptions::default())).map(|result| result_map(&result))
        },
    );
    let w = world.clone();
    engine.register_fn(
        "download",
        move |ctx: NativeCallContext, c: &mut ClientRef, name: &str, options: Map| {
            at(&w, &ctx);
            let options = download_options(options)?;
            lift(w.download(c, name, options)).map(|result| result_map(&result))
        },
    );
    let w = world.clone();
    engine.register_fn("files", move |c: &mut ClientRef| lift(w.files(c)).map(strings));
    let w = world.clone();
    engine.register_fn("read", move |c: &mut ClientRef, name: &str| lift(w.read(c, name)));
    let w = world.clone();
    engine.register_fn("sha1", move |c: &mut ClientRef, name: &str| {
        lift(w.info(c, name)).map(|i| i.sha1.to_string())
    });
    let w = world.clone();
    engine.register_fn("size", move |c: &mut ClientRef, name: &str| {
        lift(w.info(c, name)).map(|i| i.size as INT)
    });
}

fn register_faults(engine: &mut Engine, world: &Rc<World>) {
    let w = world.clone();
    engine.register_fn("kill", move |ctx: NativeCallContext, c: &mut ClientRef| {
        at(&w, &ctx);
        lift(w.kill(c))
    });
    let w = world.clone();
    engine.register_fn("leave", move |ctx: NativeCallContext, c: &mut ClientRef| {
        at(&w, &ctx);
        lift(w.leave(c))
    });
    let w = world.clone();
    engine.register_fn("restart", move |ctx: NativeCallContext, c: &mut ClientRef| {
        at(&w, &ctx);
        lift(w.restart(c))
    });
    let w = world.clone();
    engine.register_fn(
        "corrupt",
        move |ctx: NativeCallContext, c: &mut ClientRef, name: &str| {
            at(&w, &ctx);
            lift(w.corrupt(c, name))
        },
    );
    for kind in [FaultKind::Kill, FaultKind::Stall] {
        let w = world.clone();
        engine.register_fn(
            kind.verb(),
            move |ctx: NativeCallContext, c: &mut ClientRef, name: &str, bytes: INT| {
                at(&w, &ctx);
                lift(w.arm(c, kind, name, bytes))
            },
        );
    }
    let w = world.clone();
    engine.register_fn("set_idle_timeout", move |seconds: FLOAT| {
        lift(w.set_idle_timeout(seconds))
    });
    let w = world.clone();
    engine.register_fn("set_idle_timeout", move |seconds: INT| {
        lift(w.set_idle_timeout(seconds as f64))
    });
}

fn register_transfers(engine: &mut Engine, world: &Rc<World>) {
    let w = world.clone();
    engine.register_fn(
        "start_download",
        move |ctx: NativeCallContext, c: &mut ClientRef, name: &str| {
            at(&w, &ctx);
            lift(w.start_download(c, name, DownloadOptions::default()))
        },
    );
    let w = world.clone();
    engine.register_fn(
        "start_download",
        move |ctx: NativeCallContext, c: &mut ClientRef, name: &str, options: Map| {
            at(&w, &ctx);
            let options = download_options(options)?;
            lift(w.start_download(c, name, options))
        },
    );
    let w = world.clone();
    engine.register_fn("wait", move |ctx: NativeCallContext, t: &mut Transfer| {
        at(&w, &ctx);
        lift(w.wait(t)).map(|result| result_map(&result))
    });
    let w = world.clone();
    engine.register_fn(
        "wait_all",
        move |ctx: NativeCallContext, transfers: Array| -> ScriptResult<Array> {
            at(&w, &ctx);
            let mut results = Array::with_capacity(transfers.len());
            for (i, item) in transfers.into_iter().enumerate() {
                let type_name = simple_type(item.type_name());
                let transfer = item.try_cast::<Transfer>().ok_or_else(|| {
                    script_error(format!(
                        "wait_all takes an array of transfers (from c.start_download), but item {i} has type {type_name}"
                    ))
                })?;
                results.push(result_map(&lift(w.wait(&transfer))?).into());
            }
            Ok(results)
        },
    );
}

fn register_time_and_network(engine: &mut Engine, world: &Rc<World>) {
    let w = world.clone();
    engine.register_fn("sleep", move |ctx: NativeCallContext, seconds: FLOAT| {
        at(&w, &ctx);
        lift(w.sleep(seconds))
    });
    let w = world.clone();
    engine.register_fn("sleep", move |ctx: NativeCallContext, seconds: INT| {
        at(&w, &ctx);
        lift(w.sleep(seconds as f64))
    });
    let w = world.clone();
    engine.register_fn("now", move || w.seconds_now() as FLOAT);
    // Rhai's own timestamp(), refused under --sim.
    let w = world.clone();
    engine.register_fn("timestamp", move |ctx: NativeCallContext| {
        at(&w, &ctx);
        lift(w.wall_clock()).map(Dynamic::from_timestamp)
    });
    let w = world.clone();
    engine.register_fn(
        "fluid_bound",
        move |bytes: INT, seeders: Array, downloaders: Array| -> ScriptResult<FLOAT> {
            let seeders = clients("fluid_bound", "seeders", seeders)?;
            let downloaders = clients("fluid_bound", "downloaders", downloaders)?;
            lift(w.fluid_bound(bytes, &seeders, &downloaders)).map(|secs| secs as FLOAT)
        },
    );
    let w = world.clone();
    engine.register_fn(
        "set_rate",
        move |ctx: NativeCallContext, c: &mut ClientRef, up: INT, down: INT| {
            at(&w, &ctx);
            lift(w.set_rate(c, up, down))
        },
    );
    register_pair(engine, world, "partition", |w, a, b| w.partition(a, b));
    register_pair(engine, world, "heal", |w, a, b| w.heal(a, b));
    macro_rules! latency {
        ($a:ty, $wrap_a:expr, $b:ty, $wrap_b:expr) => {{
            let w = world.clone();
            engine.register_fn("latency", move |ctx: NativeCallContext, a: $a, b: $b, ms: INT| {
                at(&w, &ctx);
                lift(w.latency(&$wrap_a(a), &$wrap_b(b), ms))
            });
        }};
    }
    latency!(ClientRef, NodeRef::Client, ClientRef, NodeRef::Client);
    latency!(ClientRef, NodeRef::Client, TrackerRef, NodeRef::Tracker);
    latency!(TrackerRef, NodeRef::Tracker, ClientRef, NodeRef::Client);
    latency!(TrackerRef, NodeRef::Tracker, TrackerRef, NodeRef::Tracker);
}

/// Registers `name(a, b)` for every mix of trackers and clients.
fn register_pair(
    engine: &mut Engine,
    world: &Rc<World>,
    name: &'static str,
    verb: fn(&World, &NodeRef, &NodeRef) -> Verdict<()>,
) {
    macro_rules! pair {
        ($a:ty, $wrap_a:expr, $b:ty, $wrap_b:expr) => {{
            let w = world.clone();
            engine.register_fn(name, move |ctx: NativeCallContext, a: $a, b: $b| {
                at(&w, &ctx);
                lift(verb(&w, &$wrap_a(a), &$wrap_b(b)))
            });
        }};
    }
    pair!(ClientRef, NodeRef::Client, ClientRef, NodeRef::Client);
    pair!(ClientRef, NodeRef::Client, TrackerRef, NodeRef::Tracker);
    pair!(TrackerRef, NodeRef::Tracker, ClientRef, NodeRef::Client);
    pair!(TrackerRef, NodeRef::Tracker, TrackerRef, NodeRef::Tracker);
}

fn register_checks(engine: &mut Engine, world: &Rc<World>) {
    let w = world.clone();
    engine.register_fn("tree", move || lift(w.tree()).map(tree_map));
    let w = world.clone();
    engine.register_fn("print_tree", move || -> ScriptResult<()> {
        w.print(tree::render(&lift(w.tree())?).trim_end());
        Ok(())
    });
    let w = world.clone();
    engine.register_fn("assert_tree", move |expected: Map| -> ScriptResult<()> {
        let expected = expected_tree(expected)?;
        let differences = tree::differences(&expected, &lift(w.tree())?);
        if !differences.is_empty() {
            let lines: Vec<String> = differences.iter().map(|line| format!("  {line}")).collect();
            return Err(script_error(format!(
                "the tree differs from the expected one:\n{}",
                lines.join("\n")
            )));
        }
        w.assertion_held();
        Ok(())
    });
    let w = world.clone();
    engine.register_fn("assert", move |condition: bool, message: &str| -> ScriptResult<()> {
        if !condition {
            return Err(script_error(format!("assertion failed: {message}")));
        }
        w.assertion_held();
        Ok(())
    });
    let w = world.clone();
    engine.register_fn("assert", move |condition: bool| -> ScriptResult<()> {
        if !condition {
            return Err(script_error("assertion failed"));
        }
        w.assertion_held();
        Ok(())
    });
    let w = world.clone();
    engine.register_fn("note", move |ctx: NativeCallContext, text: &str| {
        at(&w, &ctx);
        w.note(text)
    });
}

/// The clients in `array`, an argument of `function` named `what`.
fn clients(function: &str, what: &str, array: Array) -> ScriptResult<Vec<ClientRef>> {
    array
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let type_name = simple_type(item.type_name());
            item.try_cast::<ClientRef>().ok_or_else(|| {
                script_error(format!(
                    "{function} takes arrays of clients, but item {i} of {what} has type {type_name}"
                ))
            })
        })
        .collect()
}

/// A download's options map: `swarm` (bool) and `piece_size` (integer).
fn download_options(options: Map) -> ScriptResult<DownloadOptions> {
    let mut parsed = DownloadOptions::default();
    for (key, value) in options {
        let type_name = simple_type(value.type_name());
        match key.as_str() {
            "swarm" => {
                parsed.swarm = value.as_bool().map_err(|_| {
                    script_error(format!(
                        "download option swarm must be true or false, not a {type_name}"
                    ))
                })?;
            }
            "piece_size" => {
                let size = value.as_int().map_err(|_| {
                    script_error(format!(
                        "download option piece_size must be a number of bytes, not a {type_name}"
                    ))
                })?;
                let size = u64::try_from(size)
                    .map_err(|_| script_error(format!("download option piece_size must be positive, not {size}")))?;
                parsed.piece_size = Some(size);
            }
            other => {
                return Err(script_error(format!(
                    "unknown download option {other:?}: the options are swarm (true or false) and piece_size (bytes)"
                )))
            }
        }
    }
    Ok(parsed)
}

fn strings(items: Vec<String>) -> Array {
    items.into_iter().map(Dynamic::from).collect()
}

/// A download result as the script sees it (see the scenario reference).
fn result_map(result: &DownloadResult) -> Map {
    let mut map = Map::new();
    map.insert("file".into(), result.file.clone().into());
    match &result.outcome {
        Ok(delivered) => {
            map.insert("ok".into(), true.into());
            map.insert("from".into(), (delivered.from as INT).into());
            map.insert("bytes".into(), (delivered.info.size as INT).into());
            map.insert("sha1".into(), delivered.info.sha1.to_string().into());
            map.insert("secs".into(), (delivered.secs as FLOAT).into());
            if let Some(swarm) = &delivered.swarm {
                let sources: Map = swarm
                    .sources
                    .iter()
                    .map(|(peer, bytes)| (peer.to_string().into(), (*bytes as INT).into()))
                    .collect();
                map.insert("swarm".into(), true.into());
                map.insert("sources".into(), sources.into());
                map.insert("resumed".into(), (swarm.resumed as INT).into());
                map.insert("piece_size".into(), (swarm.piece_size as INT).into());
            }
        }
        Err(error) => {
            map.insert("ok".into(), false.into());
            map.insert("error".into(), error.clone().into());
        }
    }
    map
}

fn tree_map(tree: tree::Tree) -> Map {
    tree.into_iter()
        .map(|(id, files)| (id.to_string().into(), strings(files).into()))
        .collect()
}

/// Reads `assert_tree`'s argument: client id to an array of file names.
fn expected_tree(expected: Map) -> ScriptResult<BTreeMap<String, Vec<String>>> {
    let mut tree = BTreeMap::new();
    for (client, files) in expected {
        let bad = |what: &str| {
            script_error(format!(
                "assert_tree: the files of \"{client}\" must be an array of file names, like [\"test1.txt\"]; found {what}"
            ))
        };
        let type_name = simple_type(files.type_name());
        let files = files.try_cast::<Array>().ok_or_else(|| bad(type_name))?;
        let names = files
            .into_iter()
            .map(|file| {
                let type_name = simple_type(file.type_name());
                file.try_cast::<ImmutableString>()
                    .map(|s| s.to_string())
                    .ok_or_else(|| bad(type_name))
            })
            .collect::<ScriptResult<Vec<String>>>()?;
        tree.insert(client.to_string(), names);
    }
    Ok(tree)
}
