//! A static check that a chat template never puts a namespace inside a namespace.
//!
//! `{% set ns.me = ns %}` makes a value that contains itself, and minijinja then recurses
//! without end wherever it prints, compares or concatenates it (`~`, `|lower`, `==`, …):
//! the stack overflows and the process aborts, with no error to catch. The printing paths
//! we own check nesting depth at run time (`template::shallow`); the others are minijinja's.
//! Namespaces are the only mutable values in a template (pycompat adds no mutating
//! methods), so if no namespace attribute can ever receive a namespace, or a list or map
//! holding one, no value can contain itself. That is what this checks, over the template's
//! syntax tree, before the template ever runs.
//!
//! The analysis is flow-insensitive and errs towards refusing: every name gets the join of
//! every value assigned to it anywhere, macro parameters get what any call passes. Real
//! templates assign namespace attributes strings, numbers, booleans and message fields,
//! which all pass.

use minijinja::machinery::ast::{self, CallArg, Expr, Stmt};
use std::collections::HashMap;

/// What an expression may evaluate to, ordered: `Plain < Ns < Holds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Holds no namespace: context data, constants, strings, numbers, namespace attributes.
    Plain,
    /// A namespace itself (or plain); its attributes and items are plain.
    Ns,
    /// May be or hold a namespace anywhere inside.
    Holds,
}

impl Kind {
    fn join(self, other: Kind) -> Kind {
        self.max(other)
    }
    /// The kind of a container holding a value of this kind.
    fn contained(self) -> Kind {
        if self == Kind::Plain {
            Kind::Plain
        } else {
            Kind::Holds
        }
    }
    /// The kind of an attribute, item or element of a value of this kind.
    fn element(self) -> Kind {
        if self == Kind::Holds {
            Kind::Holds
        } else {
            Kind::Plain
        }
    }
}

/// Filters whose result is a string, number or boolean whatever they are given.
const SCALAR_FILTERS: &[&str] = &[
    "abs",
    "bool",
    "capitalize",
    "count",
    "e",
    "escape",
    "float",
    "format",
    "indent",
    "int",
    "join",
    "length",
    "lower",
    "pprint",
    "replace",
    "round",
    "safe",
    "split",
    "string",
    "striptags",
    "title",
    "tojson",
    "trim",
    "truncate",
    "upper",
    "urlencode",
    "wordcount",
    "wordwrap",
];

#[derive(Default)]
struct Analysis<'a> {
    names: HashMap<&'a str, Kind>,
    /// Each macro's parameter names, to pass call-site arguments on.
    macros: HashMap<&'a str, Vec<&'a str>>,
    changed: bool,
    /// Lines of `set x.attr = …` statements that may store a namespace.
    offending: Vec<u16>,
}

/// Refuse a template in which some `{% set ns.attr = … %}` could store a namespace, with
/// the line it is on. A template that does not parse passes: compiling it reports that.
pub fn check(source: &str) -> Result<(), String> {
    let Ok(root) = minijinja::machinery::parse(source, "chat_template", Default::default()) else {
        return Ok(());
    };
    let mut a = Analysis::default();
    // every pass only raises kinds, so this settles; the cap is for safety
    for _ in 0..64 {
        a.changed = false;
        a.offending.clear();
        a.stmt(&root);
        if !a.changed {
            break;
        }
    }
    if a.changed {
        return Err("the chat template's assignments are too tangled to check".into());
    }
    match a.offending.first() {
        None => Ok(()),
        Some(line) => Err(format!(
            "line {line} may store a namespace inside a namespace (`{{% set ns.x = … %}}` with a namespace, \
             or a list or map holding one); such a value contains itself and cannot be printed safely"
        )),
    }
}

impl<'a> Analysis<'a> {
    fn raise(&mut self, name: &'a str, kind: Kind) {
        let slot = self.names.entry(name).or_insert(Kind::Plain);
        if kind > *slot {
            *slot = kind;
            self.changed = true;
        }
    }

    fn assign(&mut self, target: &Expr<'a>, kind: Kind) {
        match target {
            Expr::Var(v) => self.raise(v.id, kind),
            Expr::Tuple(t) => t
                .items
                .iter()
                .for_each(|item| self.assign(item, kind.element())),
            Expr::List(l) => l
                .items
                .iter()
                .for_each(|item| self.assign(item, kind.element())),
            Expr::GetAttr(g) => {
                self.expr(&g.expr);
                if kind != Kind::Plain {
                    self.offending.push(g.span().start_line);
                }
            }
            other => {
                self.expr(other);
            }
        }
    }

    fn body(&mut self, stmts: &[Stmt<'a>]) {
        stmts.iter().for_each(|s| self.stmt(s));
    }

    fn stmt(&mut self, s: &Stmt<'a>) {
        match s {
            Stmt::Template(t) => self.body(&t.children),
            Stmt::EmitExpr(e) => {
                self.expr(&e.expr);
            }
            Stmt::ForLoop(f) => {
                let item = self.expr(&f.iter).element();
                self.assign(&f.target, item);
                self.raise("loop", item);
                if let Some(e) = &f.filter_expr {
                    self.expr(e);
                }
                self.body(&f.body);
                self.body(&f.else_body);
            }
            Stmt::IfCond(i) => {
                self.expr(&i.expr);
                self.body(&i.true_body);
                self.body(&i.false_body);
            }
            Stmt::WithBlock(w) => {
                for (target, value) in &w.assignments {
                    let kind = self.expr(value);
                    self.assign(target, kind);
                }
                self.body(&w.body);
            }
            Stmt::Set(set) => {
                let kind = self.expr(&set.expr);
                self.assign(&set.target, kind);
            }
            Stmt::SetBlock(set) => {
                if let Some(f) = &set.filter {
                    self.expr(f);
                }
                self.body(&set.body);
                self.assign(&set.target, Kind::Plain); // the captured text
            }
            Stmt::AutoEscape(a) => {
                self.expr(&a.enabled);
                self.body(&a.body);
            }
            Stmt::FilterBlock(f) => {
                self.expr(&f.filter);
                self.body(&f.body);
            }
            Stmt::Macro(m) => self.define(m),
            Stmt::CallBlock(c) => {
                self.call(&c.call);
                // the caller's own parameters get whatever `caller(…)` passes: unknown here
                for arg in &c.macro_decl.args {
                    self.assign(arg, Kind::Holds);
                }
                self.body(&c.macro_decl.body);
            }
            Stmt::Do(d) => {
                self.call(&d.call);
            }
            // extends/include/import/block: a chat template is rendered alone, so these
            // fail or render nothing of their own
            _ => {}
        }
    }

    fn define(&mut self, m: &ast::Macro<'a>) {
        let params: Vec<&'a str> = m
            .args
            .iter()
            .filter_map(|a| {
                if let Expr::Var(v) = a {
                    Some(v.id)
                } else {
                    None
                }
            })
            .collect();
        // defaults belong to the last parameters
        let first_default = params.len().saturating_sub(m.defaults.len());
        for (name, default) in params[first_default..].iter().zip(&m.defaults) {
            let kind = self.expr(default);
            self.raise(name, kind);
        }
        self.macros.insert(m.name, params);
        self.body(&m.body);
    }

    fn args(&mut self, args: &[CallArg<'a>]) -> Kind {
        let mut kind = Kind::Plain;
        for arg in args {
            let k = match arg {
                CallArg::Pos(e)
                | CallArg::Kwarg(_, e)
                | CallArg::PosSplat(e)
                | CallArg::KwargSplat(e) => self.expr(e),
            };
            kind = kind.join(k.contained());
        }
        kind
    }

    fn call(&mut self, c: &ast::Call<'a>) -> Kind {
        match &c.expr {
            Expr::Var(v) if v.id == "namespace" => {
                if self.args(&c.args) != Kind::Plain {
                    self.offending.push(c.expr.span().start_line);
                }
                Kind::Ns
            }
            Expr::Var(v) if self.macros.contains_key(v.id) => {
                let params = self.macros[v.id].clone();
                for (i, arg) in c.args.iter().enumerate() {
                    match arg {
                        CallArg::Pos(e) => {
                            let kind = self.expr(e);
                            if let Some(p) = params.get(i) {
                                self.raise(p, kind);
                            }
                        }
                        CallArg::Kwarg(name, e) => {
                            let kind = self.expr(e);
                            if let Some(p) = params.iter().find(|p| *p == name) {
                                self.raise(p, kind);
                            }
                        }
                        CallArg::PosSplat(e) | CallArg::KwargSplat(e) => {
                            let kind = self.expr(e).element();
                            params.iter().for_each(|p| self.raise(p, kind));
                        }
                    }
                }
                Kind::Plain // a macro returns its rendered text
            }
            // a method: what the receiver holds, or what the arguments pass in (`d.get(k, ns)`)
            Expr::GetAttr(g) => {
                let receiver = self.expr(&g.expr).element();
                receiver.join(self.args(&c.args))
            }
            // any other function (`dict(x=ns)`, `range`, `raise_exception`, `caller`): what
            // its arguments could pass through
            callee => {
                self.expr(callee);
                self.args(&c.args)
            }
        }
    }

    fn expr(&mut self, e: &Expr<'a>) -> Kind {
        match e {
            Expr::Var(v) => self.names.get(v.id).copied().unwrap_or(Kind::Plain),
            Expr::Const(_) => Kind::Plain,
            Expr::Slice(s) => {
                for part in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.expr(part);
                }
                self.expr(&s.expr).element().contained()
            }
            Expr::UnaryOp(u) => {
                self.expr(&u.expr);
                Kind::Plain
            }
            Expr::BinOp(b) => {
                let (left, right) = (self.expr(&b.left), self.expr(&b.right));
                match b.op {
                    // `and`/`or` give one of their operands
                    ast::BinOpKind::ScAnd | ast::BinOpKind::ScOr => left.join(right),
                    // list concatenation and repetition
                    ast::BinOpKind::Add | ast::BinOpKind::Mul => {
                        left.contained().join(right.contained())
                    }
                    _ => Kind::Plain,
                }
            }
            Expr::Compare(c) => {
                self.expr(&c.expr);
                for op in &c.ops {
                    self.expr(&op.expr);
                }
                Kind::Plain
            }
            Expr::IfExpr(i) => {
                self.expr(&i.test_expr);
                let yes = self.expr(&i.true_expr);
                let no = i.false_expr.as_ref().map_or(Kind::Plain, |f| self.expr(f));
                yes.join(no)
            }
            Expr::Filter(f) => {
                let input = f.expr.as_ref().map_or(Kind::Plain, |x| self.expr(x));
                let args = self.args(&f.args);
                if SCALAR_FILTERS.contains(&f.name) {
                    Kind::Plain
                } else {
                    input.join(args)
                }
            }
            Expr::Test(t) => {
                self.expr(&t.expr);
                self.args(&t.args);
                Kind::Plain
            }
            Expr::GetAttr(g) => self.expr(&g.expr).element(),
            Expr::GetItem(g) => {
                self.expr(&g.subscript_expr);
                self.expr(&g.expr).element()
            }
            Expr::Call(c) => self.call(c),
            Expr::List(l) => self.items(&l.items),
            Expr::Tuple(t) => self.items(&t.items),
            Expr::Map(m) => {
                let keys = self.items(&m.keys);
                keys.join(self.items(&m.values))
            }
        }
    }

    fn items(&mut self, items: &[Expr<'a>]) -> Kind {
        items.iter().fold(Kind::Plain, |kind, item| {
            let k = self.expr(item);
            kind.join(k.contained())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn real_templates_pass() {
        for t in [
            // Hugging Face's Llama 2 template (no namespaces at all)
            "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{{ message['content'].strip() }}{% endfor %}",
            // Qwen 2.5-style: flags and an index from a loop
            "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}{%- if ns.multi_step_tool and message.role == 'user' %}{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}{{ ns.last_query_index }}",
            // DeepSeek-style: accumulating text
            "{% set ns = namespace(is_first=false, is_tool=false, system_prompt='') %}{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}",
            // Mistral-style counter, and a macro writing a parameter's field
            "{%- set ns = namespace(index=0) %}{%- macro note(m) %}{%- set ns.index = ns.index + 1 %}{%- set ns.last = m.content %}{%- endmacro %}{%- for message in messages %}{{ note(message) }}{%- endfor %}{{ ns.index }}",
            // a message list kept in a namespace
            "{%- set ns = namespace(rest=messages[1:], sys=none) %}{%- set ns.rest = ns.rest + [messages[0]] %}{{ ns.rest|length }}",
        ] {
            assert_eq!(check(t), Ok(()), "{t}");
        }
    }

    #[test]
    fn every_route_to_a_cycle_is_refused() {
        for t in [
            "{% set ns = namespace() %}{% set ns.me = ns %}",
            "{% set ns = namespace() %}\n{% set ns.me = [ns] %}",
            "{% set ns = namespace() %}{% set alias = ns %}{% set ns.me = alias %}",
            "{% set ns = namespace() %}{% set l = [ns] %}{% set ns.me = l[0] %}",
            "{% set a = namespace() %}{% set b = namespace() %}{% set a.b = b %}{% set b.a = a %}",
            "{% set ns = namespace() %}{% for n in [ns] %}{% set ns.me = n %}{% endfor %}",
            "{% set ns = namespace() %}{% macro put(x) %}{% set ns.me = x %}{% endmacro %}{{ put(ns) }}",
            "{% set ns = namespace() %}{% set ns.me = dict(x=ns) %}",
            "{% set ns = namespace() %}{% set ns.me = ns.missing|default(ns) %}",
            "{% set ns = namespace() %}{% set ns.me = {}.get('x', ns) %}",
            "{% set ns = namespace() %}{% set ns.me = none or ns %}",
            "{% set ns = namespace() %}{% set ns2 = namespace(inner=ns) %}",
            "{% set ns = namespace() %}{% with x = ns %}{% set ns.me = x %}{% endwith %}",
        ] {
            let err = check(t).expect_err(t);
            assert!(err.contains("namespace inside a namespace"), "{t}: {err}");
        }
        assert!(
            check("{% set ns = namespace() %}\n\n{% set ns.me = [ns] %}")
                .unwrap_err()
                .starts_with("line 3 ")
        );
    }
}
