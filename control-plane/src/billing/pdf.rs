//! An invoice as a PDF a customer can file (`GET /v1/invoices/{id}/pdf`): A4, the PDF standard
//! fonts (no font file to ship), every line with its quantity and amount, tiered lines with
//! their tiers, the totals, more pages when the lines need them. Rendered with `printpdf`.
//!
//! Streams are left uncompressed: an invoice is a few kilobytes, and its text stays readable
//! to anyone auditing the file. Text is written in the standard fonts' WinAnsi encoding;
//! characters outside it are replaced by `?`.

use printpdf::{
    BuiltinFont, Mm, Op, PdfDocument, PdfFontHandle, PdfPage, PdfSaveOptions, Point, Pt, TextItem,
};

use super::invoices::{Invoice, InvoiceStatus, Line};
use crate::money::{Currency, format as format_money};

/// Who the invoice is for, as the account shows it.
#[derive(Debug, Clone)]
pub struct BillTo {
    pub name: String,
    pub email: String,
    pub account_id: String,
}

fn win_ansi(s: &str) -> String {
    s.chars()
        .map(|c| match c as u32 {
            0x20..=0x7e | 0xa0..=0xff => c,
            _ => '?',
        })
        .collect()
}

const TOP_MM: f32 = 280.0;
const BOTTOM_MM: f32 = 22.0;
const LEFT_MM: f32 = 18.0;
const ROW_MM: f32 = 5.0;
/// Description column width, characters of Courier 9 pt.
const DESCRIPTION_CHARS: usize = 56;

struct Writer {
    pages: Vec<Vec<Op>>,
    y: f32,
    title: String,
}

impl Writer {
    fn new(title: String) -> Self {
        Self {
            pages: vec![Vec::new()],
            y: TOP_MM,
            title,
        }
    }

    fn text(&mut self, x: f32, font: BuiltinFont, size: f32, s: &str) {
        let ops = self.pages.last_mut().expect("a page");
        ops.push(Op::StartTextSection);
        ops.push(Op::SetFont {
            font: PdfFontHandle::Builtin(font),
            size: Pt(size),
        });
        ops.push(Op::SetTextCursor {
            pos: Point::new(Mm(x), Mm(self.y)),
        });
        ops.push(Op::ShowText {
            items: vec![TextItem::Text(win_ansi(s))],
        });
        ops.push(Op::EndTextSection);
    }

    /// Moves down a row, starting a new page (with the title repeated) at the bottom.
    fn down(&mut self, rows: f32) {
        self.y -= ROW_MM * rows;
        if self.y < BOTTOM_MM {
            self.pages.push(Vec::new());
            self.y = TOP_MM;
            let title = format!("{} (continued)", self.title);
            self.text(LEFT_MM, BuiltinFont::HelveticaBold, 12.0, &title);
            self.y -= ROW_MM * 2.0;
        }
    }

    fn row(&mut self, description: &str, quantity: &str, amount: &str) {
        let row = format!("{description:<DESCRIPTION_CHARS$} {quantity:>12} {amount:>18}");
        self.text(LEFT_MM, BuiltinFont::Courier, 9.0, &row);
        self.down(1.0);
    }
}

/// Splits `s` into pieces of at most `width` characters, at spaces where it can.
fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut line = String::new();
    for word in s.split_whitespace() {
        let mut word = word.to_owned();
        while word.chars().count() > width {
            let head: String = word.chars().take(width).collect();
            word = word.chars().skip(width).collect();
            if !line.is_empty() {
                out.push(std::mem::take(&mut line));
            }
            out.push(head);
        }
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            out.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() || out.is_empty() {
        out.push(line);
    }
    out
}

fn line_rows(w: &mut Writer, l: &Line, c: Currency) {
    let pieces = wrap(&l.description, DESCRIPTION_CHARS);
    let amount = format_money(l.amount_minor, c);
    for (i, piece) in pieces.iter().enumerate() {
        if i == 0 {
            w.row(piece, &l.quantity.to_string(), &amount);
        } else {
            w.row(piece, "", "");
        }
    }
    for t in l.tiers.iter().flatten() {
        let range = match t.up_to {
            Some(u) => format!("  units {} to {u}", t.from),
            None => format!("  units {} and up", t.from),
        };
        let price = format!(
            "{range} at {} each{}",
            format_money(t.unit_minor, c),
            if t.flat_minor != 0 {
                format!(" + {} flat", format_money(t.flat_minor, c))
            } else {
                String::new()
            }
        );
        w.row(
            &price,
            &t.quantity.to_string(),
            &format_money(t.amount_minor, c),
        );
    }
}

/// The invoice as PDF bytes.
pub fn render(inv: &Invoice, to: &BillTo) -> Vec<u8> {
    let c = inv.currency;
    let number = inv.number.clone().unwrap_or_else(|| "draft".to_owned());
    let title = match inv.status {
        InvoiceStatus::Draft => "Draft invoice".to_owned(),
        _ => format!("Invoice {number}"),
    };
    let mut w = Writer::new(title.clone());
    w.text(LEFT_MM, BuiltinFont::HelveticaBold, 18.0, &title);
    w.down(2.0);
    let day = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d").to_string();
    let facts = [
        ("From", "Tollgate".to_owned()),
        ("Bill to", format!("{} <{}>", to.name, to.email)),
        ("Account", to.account_id.clone()),
        ("Status", format!("{:?}", inv.status).to_lowercase()),
        (
            "Issued",
            inv.finalized_at.map_or_else(|| "not yet".to_owned(), day),
        ),
        (
            "Service period",
            format!("{} to {}", day(inv.period_start), day(inv.period_end)),
        ),
        (
            "Paid",
            inv.paid_at.map_or_else(|| "not yet".to_owned(), day),
        ),
    ];
    for (k, v) in facts {
        w.text(LEFT_MM, BuiltinFont::HelveticaBold, 10.0, k);
        w.text(LEFT_MM + 35.0, BuiltinFont::Helvetica, 10.0, &v);
        w.down(1.2);
    }
    w.down(1.0);
    let header = format!(
        "{:<DESCRIPTION_CHARS$} {:>12} {:>18}",
        "Description", "Quantity", "Amount"
    );
    w.text(LEFT_MM, BuiltinFont::CourierBold, 9.0, &header);
    w.down(1.4);
    for l in &inv.lines {
        line_rows(&mut w, l, c);
    }
    w.down(1.0);
    let totals = [
        ("Subtotal", inv.subtotal_minor),
        ("Credit applied", -inv.credit_applied_minor),
        ("Total", inv.total_minor),
        ("Amount due", inv.amount_due_minor),
        ("Amount paid", inv.amount_paid_minor),
    ];
    // Credit notes only show when there are any (the invoice itself never changes).
    let credited = [
        ("Credit notes", -inv.credit_noted_minor),
        ("Amount remaining", inv.amount_remaining_minor),
    ];
    let shown = if inv.credit_noted_minor > 0 {
        &credited[..]
    } else {
        &[]
    };
    for &(k, v) in totals.iter().chain(shown) {
        let row = format!("{k:>69} {:>18}", format_money(v, c));
        w.text(LEFT_MM, BuiltinFont::CourierBold, 9.0, &row);
        w.down(1.0);
    }
    let mut doc = PdfDocument::new(&title);
    let pages = w
        .pages
        .into_iter()
        .map(|ops| PdfPage::new(Mm(210.0), Mm(297.0), ops))
        .collect();
    let opts = PdfSaveOptions {
        optimize: false,
        ..PdfSaveOptions::default()
    };
    doc.with_pages(pages).save(&opts, &mut Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_descriptions_wrap_and_odd_characters_are_replaced() {
        let w = wrap(&"word ".repeat(40), 20);
        assert!(w.iter().all(|l| l.chars().count() <= 20));
        assert_eq!(w.join(" ").split(' ').count(), 40);
        assert_eq!(wrap(&"x".repeat(45), 20).len(), 3);
        assert_eq!(win_ansi("café ✓ 日本"), "café ? ??");
    }
}
