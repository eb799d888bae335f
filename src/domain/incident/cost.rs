//! What a CEL expression from a spec may cost, decided twice: at admission from its
//! syntax tree ([`estimate`]), and at run time by an interrupt the evaluator checks on
//! every comprehension step ([`instrument`], [`Interrupt`]).
//!
//! The cel crate (0.15) has no cost tracking and no way to stop a running program, so
//! both are built here on its public AST: `Program::expression` is read for the
//! estimate, and a copy of it with a tick call wrapped around every loop step is what
//! runs. The tick is an identity function that fails once the interrupt is raised, so
//! a cancelled evaluation stops within one iteration of its innermost loop.
//!
//! # The estimate
//!
//! Worst case, in "steps" (one AST node evaluated ≈ one step; a byte of string or list
//! data handled by a function ≈ [`BYTE_COST`] steps). Every value that comes from the
//! delivery is bounded by the body: at most `maxBodyBytes` bytes and `maxBodyBytes / 2`
//! list items (`[0,0,…]`). So:
//!
//! - a comprehension (`map`, `filter`, `all`, `exists`, `exists_one`) over data runs its
//!   step up to `maxBodyBytes / 2` times, over a literal list as many times as it has
//!   items; nested comprehensions multiply, except that one over the current element
//!   of an enclosing comprehension is amortised (all elements together are still at
//!   most the body: `body.groups.map(g, g.items.map(i, i.id))` is linear);
//! - a function that reads its arguments' contents (`+`, `==`, `contains`, `matches`,
//!   `size`, `lowerAscii`, …) costs their size: a literal's own, an element of an
//!   enclosing comprehension amortised over it, anything else the whole body;
//! - for Alertmanager and Grafana every expression runs once per alert, so the cost is
//!   multiplied by the alerts mapped per delivery (`maxAlertsPerDelivery`).
//!
//! An expression estimated above [`MAX_COST`] is a spec problem naming its field.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cel::common::ast::{
    CallExpr, ComprehensionExpr, EntryExpr, Expr, IdedExpr, LiteralValue, operators,
};

/// Most steps one expression may cost per delivery, worst case: about 0.1–0.5 s of one
/// core in the cel interpreter (measured: docs/bench.md "CEL cost"). A single pass over
/// a 1 MiB body's lists with a small step fits; a comprehension nested in one over the
/// same data (quadratic in the body) does not.
pub const MAX_COST: f64 = 10_000_000.0;

/// Steps per byte of data a function reads (string and list contents).
pub const BYTE_COST: f64 = 0.1;

/// The function wrapped around every comprehension step of an instrumented expression.
pub const TICK: &str = "__hookwarden_tick";

/// What bounds the data an expression sees.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// `spec.limits.maxBodyBytes`.
    pub body_bytes: usize,
    /// Evaluations per delivery (alerts per delivery for Alertmanager and Grafana, else 1).
    pub evaluations: usize,
}

impl Bounds {
    fn bytes(&self) -> f64 {
        self.body_bytes.max(1) as f64
    }

    /// Most items a list or map from the body can have.
    fn items(&self) -> f64 {
        (self.body_bytes as f64 / 2.0).max(1.0)
    }
}

/// Worst-case steps of `expr` per delivery under `bounds` (see the module doc).
pub fn estimate(expr: &IdedExpr, bounds: &Bounds) -> f64 {
    let mut estimator = Estimator {
        bounds,
        vars: HashMap::new(),
        accumulators: Vec::new(),
    };
    estimator.cost(expr, bounds.evaluations.max(1) as f64)
}

struct Estimator<'b> {
    bounds: &'b Bounds,
    /// Iteration variables in scope.
    vars: HashMap<String, Var>,
    /// Accumulator names (`@result`): appending to them is O(1).
    accumulators: Vec<String>,
}

/// A comprehension variable in scope.
#[derive(Clone, Copy)]
struct Var {
    /// Items its comprehension runs over, per run.
    items: f64,
    /// Bytes of one item: over body data the average (all items together are at most
    /// the body, which is what amortises work on them), over a literal list its largest.
    item_bytes: f64,
}

/// Calls whose cost does not depend on the size of their arguments.
const CONSTANT_TIME: [&str; 16] = [
    operators::CONDITIONAL,
    operators::LOGICAL_AND,
    operators::LOGICAL_OR,
    operators::LOGICAL_NOT,
    operators::NEGATE,
    operators::SUBSTRACT,
    operators::MULTIPLY,
    operators::DIVIDE,
    operators::MODULO,
    operators::INDEX,
    operators::NOT_STRICTLY_FALSE,
    "has",
    "type",
    "dyn",
    "int",
    "uint",
];

impl Estimator<'_> {
    fn cost(&mut self, e: &IdedExpr, mult: f64) -> f64 {
        match &e.expr {
            Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => mult,
            Expr::Select(select) => mult + self.cost(&select.operand, mult),
            Expr::List(list) => {
                mult + list
                    .elements
                    .iter()
                    .map(|x| self.cost(x, mult))
                    .sum::<f64>()
            }
            Expr::Map(map) => mult + self.entries(&map.entries, mult),
            Expr::Struct(strct) => mult + self.entries(&strct.entries, mult),
            Expr::Call(call) => self.call(call, mult),
            Expr::Comprehension(c) => self.comprehension(c, mult),
        }
    }

    fn entries(&mut self, entries: &[cel::common::ast::IdedEntryExpr], mult: f64) -> f64 {
        entries
            .iter()
            .map(|entry| match &entry.expr {
                EntryExpr::StructField(f) => self.cost(&f.value, mult),
                EntryExpr::MapEntry(m) => self.cost(&m.key, mult) + self.cost(&m.value, mult),
            })
            .sum()
    }

    fn call(&mut self, call: &CallExpr, mult: f64) -> f64 {
        let operands: Vec<&IdedExpr> = call
            .target
            .as_deref()
            .into_iter()
            .chain(call.args.iter())
            .collect();
        let mut cost = mult;
        for operand in &operands {
            cost += self.cost(operand, mult);
        }
        // `@result + [x]` (map, filter) appends in place: it moves the item, it does not
        // copy the accumulated list or the item's bytes.
        let appends =
            call.func_name == operators::ADD && operands.iter().any(|o| self.is_accumulator(o));
        if !appends && !CONSTANT_TIME.contains(&call.func_name.as_str()) {
            let sizes = operands.iter().map(|o| self.size(o));
            let data = if matches!(
                call.func_name.as_str(),
                operators::EQUALS | operators::NOT_EQUALS
            ) {
                // Equality stops at the shorter operand.
                sizes.fold(f64::INFINITY, f64::min)
            } else {
                sizes.sum()
            };
            if data.is_finite() {
                cost += mult * data * BYTE_COST;
            }
        }
        cost
    }

    fn is_accumulator(&self, e: &IdedExpr) -> bool {
        matches!(&e.expr, Expr::Ident(name) if self.accumulators.iter().any(|a| a == name))
    }

    /// Bytes of data an operand can hold, per evaluation; an element of an enclosing
    /// comprehension is amortised over its items.
    fn size(&self, e: &IdedExpr) -> f64 {
        match &e.expr {
            Expr::Literal(LiteralValue::String(s)) => s.inner().len() as f64,
            Expr::Literal(LiteralValue::Bytes(b)) => b.inner().len() as f64,
            Expr::Literal(_) => 1.0,
            // Appending to the accumulator (`@result + [x]`) does not copy it.
            Expr::Ident(name) if self.accumulators.iter().any(|a| a == name) => 1.0,
            // A list or map written out is as large as what it holds.
            Expr::List(list) => list.elements.iter().map(|x| self.size(x)).sum::<f64>() + 1.0,
            Expr::Map(map) => {
                map.entries
                    .iter()
                    .map(|entry| match &entry.expr {
                        EntryExpr::MapEntry(m) => self.size(&m.key) + self.size(&m.value),
                        EntryExpr::StructField(f) => self.size(&f.value),
                    })
                    .sum::<f64>()
                    + 1.0
            }
            Expr::Call(call) if call.func_name != operators::INDEX => {
                if is_comparison(call) || call.func_name == "size" {
                    1.0
                } else if CONSTANT_TIME.contains(&call.func_name.as_str()) {
                    // Numbers, bools, the conditional's branches.
                    call.args.iter().map(|x| self.size(x)).fold(1.0, f64::max)
                } else {
                    // Concatenation and string functions: at most what they read.
                    call.target
                        .as_deref()
                        .into_iter()
                        .chain(call.args.iter())
                        .map(|x| self.size(x))
                        .sum::<f64>()
                        .max(1.0)
                }
            }
            // What a comprehension builds is about as large as what it ran over: an
            // element of an enclosing one, or a few bytes per item of a literal list.
            Expr::Comprehension(c) => match &c.iter_range.expr {
                Expr::List(list) => 16.0 * list.elements.len().max(1) as f64,
                Expr::Map(map) => 16.0 * map.entries.len().max(1) as f64,
                _ => self.size(&c.iter_range),
            },
            _ => match root(e).and_then(|name| self.vars.get(name)) {
                Some(var) => var.item_bytes,
                None => self.bounds.bytes(),
            },
        }
    }

    fn comprehension(&mut self, c: &ComprehensionExpr, mult: f64) -> f64 {
        let mut cost = self.cost(&c.iter_range, mult) + self.cost(&c.accu_init, mult);
        let var = match &c.iter_range.expr {
            Expr::List(list) => Var {
                items: list.elements.len().max(1) as f64,
                item_bytes: list
                    .elements
                    .iter()
                    .map(|x| self.size(x))
                    .fold(1.0, f64::max),
            },
            Expr::Map(map) => Var {
                items: map.entries.len().max(1) as f64,
                item_bytes: self.bounds.bytes(),
            },
            _ => Var {
                items: self.bounds.items(),
                item_bytes: self.bounds.bytes() / self.bounds.items(),
            },
        };
        // Over an element of an enclosing comprehension over data: all its runs
        // together see at most the body's items.
        let runs = match root(&c.iter_range).and_then(|name| self.vars.get(name)) {
            Some(outer) if !is_literal_list(&c.iter_range) => mult / outer.items.max(1.0),
            _ => mult,
        };
        let inner = runs * var.items;
        let saved: Vec<(String, Option<Var>)> = std::iter::once(&c.iter_var)
            .chain(c.iter_var2.as_ref())
            .map(|v| (v.clone(), self.vars.insert(v.clone(), var)))
            .collect();
        self.accumulators.push(c.accu_var.clone());
        cost += self.cost(&c.loop_cond, inner) + self.cost(&c.loop_step, inner);
        self.accumulators.pop();
        for (name, previous) in saved {
            match previous {
                Some(p) => self.vars.insert(name, p),
                None => self.vars.remove(&name),
            };
        }
        cost + self.cost(&c.result, mult)
    }
}

/// Comparisons return a bool whatever they compare.
fn is_comparison(call: &CallExpr) -> bool {
    matches!(
        call.func_name.as_str(),
        operators::EQUALS
            | operators::NOT_EQUALS
            | operators::LESS
            | operators::LESS_EQUALS
            | operators::GREATER
            | operators::GREATER_EQUALS
            | operators::IN
    )
}

fn is_literal_list(e: &IdedExpr) -> bool {
    matches!(e.expr, Expr::List(_) | Expr::Map(_))
}

/// The variable an expression reads from: `x` for `x.a.b[0]`.
fn root(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Ident(name) => Some(name),
        Expr::Select(s) => root(&s.operand),
        Expr::Call(c) if c.func_name == operators::INDEX => c.args.first().and_then(root),
        _ => None,
    }
}

/// A copy of `expr` whose every comprehension step passes through [`TICK`], keeping the
/// shapes the interpreter optimises (`@result + [x]` for `map`/`filter`, `@result && x`
/// for `all`/`exists`) so instrumenting changes no complexity.
pub fn instrument(expr: &IdedExpr) -> IdedExpr {
    let mut out = expr.clone();
    let mut next_id = max_id(expr) + 1;
    rewrite(&mut out, &mut next_id);
    out
}

fn max_id(e: &IdedExpr) -> u64 {
    let mut max = e.id;
    visit_children(e, &mut |c| max = max.max(max_id(c)));
    max
}

fn visit_children(e: &IdedExpr, f: &mut dyn FnMut(&IdedExpr)) {
    match &e.expr {
        Expr::Select(s) => f(&s.operand),
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                f(t);
            }
            c.args.iter().for_each(&mut *f);
        }
        Expr::List(l) => l.elements.iter().for_each(&mut *f),
        Expr::Map(m) => m.entries.iter().for_each(|en| entry_children(en, f)),
        Expr::Struct(s) => s.entries.iter().for_each(|en| entry_children(en, f)),
        Expr::Comprehension(c) => {
            for x in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                f(x);
            }
        }
        Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => {}
    }
}

fn entry_children(entry: &cel::common::ast::IdedEntryExpr, f: &mut dyn FnMut(&IdedExpr)) {
    match &entry.expr {
        EntryExpr::StructField(s) => f(&s.value),
        EntryExpr::MapEntry(m) => {
            f(&m.key);
            f(&m.value);
        }
    }
}

fn rewrite(e: &mut IdedExpr, next_id: &mut u64) {
    match &mut e.expr {
        Expr::Select(s) => rewrite(&mut s.operand, next_id),
        Expr::Call(c) => {
            if let Some(t) = &mut c.target {
                rewrite(t, next_id);
            }
            c.args.iter_mut().for_each(|a| rewrite(a, next_id));
        }
        Expr::List(l) => l.elements.iter_mut().for_each(|x| rewrite(x, next_id)),
        Expr::Map(m) => m
            .entries
            .iter_mut()
            .for_each(|en| rewrite_entry(en, next_id)),
        Expr::Struct(s) => s
            .entries
            .iter_mut()
            .for_each(|en| rewrite_entry(en, next_id)),
        Expr::Comprehension(c) => {
            for x in [
                &mut c.iter_range,
                &mut c.accu_init,
                &mut c.loop_cond,
                &mut c.loop_step,
                &mut c.result,
            ] {
                rewrite(x, next_id);
            }
            let accu = c.accu_var.clone();
            tick_step(&mut c.loop_step, &accu, next_id);
        }
        Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => {}
    }
}

fn rewrite_entry(entry: &mut cel::common::ast::IdedEntryExpr, next_id: &mut u64) {
    match &mut entry.expr {
        EntryExpr::StructField(s) => rewrite(&mut s.value, next_id),
        EntryExpr::MapEntry(m) => {
            rewrite(&mut m.key, next_id);
            rewrite(&mut m.value, next_id);
        }
    }
}

/// Puts the tick where it keeps the loop step's shape: inside `[x]` of `@result + [x]`
/// (also under a `cond ? … : @result` guard), on the right of `@result && x` /
/// `@result || x`, else around the whole step.
fn tick_step(step: &mut IdedExpr, accu: &str, next_id: &mut u64) {
    let is_accu = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(n) if n == accu);
    if let Expr::Call(call) = &mut step.expr {
        match (call.func_name.as_str(), call.args.as_mut_slice()) {
            (operators::ADD, [lhs, rhs]) if is_accu(lhs) => {
                if let Expr::List(list) = &mut rhs.expr {
                    list.elements.iter_mut().for_each(|x| wrap(x, next_id));
                    return;
                }
                wrap(rhs, next_id);
                return;
            }
            (operators::CONDITIONAL, [_, then, otherwise]) if is_accu(otherwise) => {
                tick_step(then, accu, next_id);
                return;
            }
            (operators::LOGICAL_AND | operators::LOGICAL_OR, [lhs, rhs]) if is_accu(lhs) => {
                wrap(rhs, next_id);
                return;
            }
            _ => {}
        }
    }
    wrap(step, next_id);
}

fn wrap(e: &mut IdedExpr, next_id: &mut u64) {
    let inner = std::mem::take(e);
    *next_id += 1;
    *e = IdedExpr {
        id: *next_id,
        expr: Expr::Call(CallExpr {
            func_name: TICK.to_string(),
            target: None,
            args: vec![inner],
        }),
    };
}

/// The shape of a function the cel crate registers (its own alias is private).
pub(super) type CelFunction = Box<
    dyn for<'c, 'l> Fn(
            &mut cel::FunctionContext<'c, 'l>,
        ) -> Result<cel::common::value::CowVal<'c, 'l>, cel::ExecutionError>
        + Send
        + Sync,
>;

/// Raised (by whoever waits for an evaluation) to stop it at its next loop step.
#[derive(Clone, Debug, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    pub fn new() -> Interrupt {
        Interrupt::default()
    }

    pub fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// The [`TICK`] function of an evaluation watched by this interrupt.
    pub(super) fn tick_function(&self) -> CelFunction {
        let flag = self.0.clone();
        Box::new(move |ftx: &mut cel::FunctionContext<'_, '_>| {
            if flag.load(Ordering::Relaxed) {
                return Err(cel::ExecutionError::function_error(
                    TICK,
                    "evaluation budget exceeded",
                ));
            }
            ftx.args
                .pop()
                .ok_or_else(|| cel::ExecutionError::function_error(TICK, "no argument"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(text: &str, body_bytes: usize, evaluations: usize) -> f64 {
        let program = cel::Env::stdlib().compile(text).expect("compiles");
        estimate(
            program.expression(),
            &Bounds {
                body_bytes,
                evaluations,
            },
        )
    }

    const MIB: usize = 1024 * 1024;

    #[test]
    fn plain_field_reads_are_cheap() {
        assert!(cost("body.alert.title", MIB, 1) < 10.0);
        assert!(cost(r#"body.status == "resolved""#, MIB, 1) < 10.0);
        assert!(cost("alert.labels.team", MIB, 1000) < 10_000.0);
    }

    #[test]
    fn one_pass_over_the_body_fits_and_a_nested_pass_does_not() {
        let single = cost(r#"body.alerts.exists(a, a.status == "firing")"#, MIB, 1);
        assert!(single < MAX_COST, "{single}");
        let amortised = cost("body.groups.map(g, g.items.map(i, i.id))", MIB, 1);
        assert!(amortised < MAX_COST, "{amortised}");
        let quadratic = cost("string(body.a.map(x, body.a.map(y, x + y)).size())", MIB, 1);
        assert!(quadratic > 1e5 * MAX_COST, "{quadratic}");
        // Also at a tiny body limit the nesting shows: 2 KiB → 1,024² steps.
        assert!(cost("body.a.map(x, body.a.map(y, x + y))", 2048, 1) > 1e6);
    }

    #[test]
    fn reading_the_whole_body_per_item_is_quadratic() {
        let per_item = cost("body.a.map(x, body.s + x)", MIB, 1);
        assert!(per_item > MAX_COST, "{per_item}");
        let own_element = cost(r#"body.a.map(x, x + "-suffix")"#, MIB, 1);
        assert!(own_element < MAX_COST, "{own_element}");
    }

    #[test]
    fn literal_lists_count_their_items() {
        let small = cost("[1, 2, 3].map(x, [4, 5].map(y, x * y))", MIB, 1);
        assert!(small < 100.0, "{small}");
    }

    #[test]
    fn evaluations_per_delivery_multiply() {
        let once = cost("body.title.lowerAscii()", MIB, 1);
        let per_alert = cost("body.title.lowerAscii()", MIB, 1000);
        assert!(
            once < MAX_COST && per_alert > MAX_COST,
            "{once} {per_alert}"
        );
    }

    fn run(text: &str, interrupt: &Interrupt) -> Result<cel::Value, cel::ExecutionError> {
        let env = std::sync::Arc::new(cel::Env::stdlib());
        let program = env.compile(text).expect("compiles");
        let expr = instrument(program.expression());
        let mut context = cel::Context::with_env(env);
        context
            .add_function(TICK, interrupt.tick_function())
            .expect("tick");
        context.add_variable_from_value("xs", vec![1i64, 2, 3]);
        context.resolve(&expr)
    }

    #[test]
    fn instrumenting_keeps_every_macro_s_result() {
        let free = Interrupt::new();
        for (text, want) in [
            ("xs.map(x, x * 2)", cel::Value::from(vec![2i64, 4, 6])),
            ("xs.filter(x, x > 1)", cel::Value::from(vec![2i64, 3])),
            ("xs.all(x, x > 0)", cel::Value::Bool(true)),
            ("xs.exists(x, x == 2)", cel::Value::Bool(true)),
            ("xs.exists_one(x, x == 2)", cel::Value::Bool(true)),
            ("xs.map(x, xs.map(y, x + y)).size()", cel::Value::Int(3)),
        ] {
            assert_eq!(run(text, &free), Ok(want), "{text}");
        }
    }

    #[test]
    fn a_raised_interrupt_stops_at_the_next_step() {
        let raised = Interrupt::new();
        raised.raise();
        let error = run("xs.map(x, x * 2)", &raised).expect_err("interrupted");
        assert!(error.to_string().contains("budget"), "{error}");
        // No loop, nothing to interrupt.
        assert_eq!(run("xs.size()", &raised), Ok(cel::Value::Int(3)));
    }
}
